"""Scale-out benchmark: the torch engine behind Ray Serve with 1 and 2 replicas, against
the torch engine in the service's own process.

Each engine serves the embedded default model behind the real gRPC service on
127.0.0.1; Ray runs a local cluster bound to 127.0.0.1. The machine's cores are
shared out the same way in every configuration: the in-process engine and a single
replica get all of them as torch threads, two replicas half each. Measured per
configuration, with rounds interleaved so a noisy moment does not land on one only:

* 16 concurrent streams of ``--tokens`` new tokens (greedy): aggregate tokens/s
  (median over rounds) and p99 time to first token (over every request);
* one stream: tokens/s, for the Ray path's overhead against the in-process engine
  (target >= 0.9x).

Writes ``bench/results/scale.json`` and ``scale.png``, with the load average before and
after (the machine is shared).

    python bench/scale.py                     # 16 streams, 32 tokens, 3 rounds
    python bench/scale.py --tokens 64 --rounds 5
    python bench/scale.py --threads 1 --out bench/results/scale-1thread.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Before Ray is imported: the local cluster listens on 127.0.0.1 only.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from cloud_batching import drive, pool_rounds

from edgecloud.cloud import CloudServer, TorchBackend
from edgecloud.cloud._records import RecordStore
from edgecloud.config import Settings

RESULTS = Path(__file__).parent / "results"


def settings_for(engine: str, replicas: int, threads: int, cores: int) -> Settings:
    cloud: dict[str, Any] = {
        "insecure": True, "port": 0, "max_running_sequences": 32, "model": {"threads": threads},
    }  # fmt: skip
    if engine == "ray":
        cloud["backend"] = "ray"
        # Logical CPUs: both Ray configurations stay deployed (the idle one costs memory
        # only); the torch threads are what share out the real cores.
        cloud["ray"] = {"replicas": replicas, "max_replicas": replicas, "num_cpus": 2 * cores,
                        "replica_cpus": cores / replicas, "app_name": f"scale-{replicas}"}  # fmt: skip
    return Settings.load(cloud=cloud)


async def start(name: str, settings: Settings, tmp: Path) -> tuple[Any, CloudServer]:
    t0 = time.perf_counter()
    if settings.cloud.backend == "ray":
        from edgecloud.cloud._ray import RayBackend, connect_ray

        connect_ray(settings.cloud.ray)  # on the main thread: Ray's start needs it
        backend: Any = await asyncio.to_thread(  # its sync waits refuse to run on a loop
            RayBackend.start, settings.cloud, settings.cache_dir, str(tmp / "registry")
        )
    else:
        backend = await asyncio.to_thread(TorchBackend.load, settings)
    server = await CloudServer.start(backend, settings.cloud,
                                     records=RecordStore(tmp / f"{name}.sqlite3"))  # fmt: skip
    print(f"{name}: ready in {time.perf_counter() - t0:.1f} s", flush=True)
    return backend, server


async def main(args: argparse.Namespace) -> dict[str, Any]:
    cores = os.cpu_count() or 1
    threads = args.threads or cores
    configs = {
        "torch": ("torch", 1, threads),
        "ray-1": ("ray", 1, threads),
        "ray-2": ("ray", 2, args.threads or max(1, cores // 2)),
    }
    tmp = Path(tempfile.mkdtemp(prefix="edgecloud-scale."))
    out: dict[str, Any] = {
        "cpu_count": cores, "machine": platform.processor() or platform.machine(),
        "new_tokens": args.tokens, "streams": args.streams, "rounds": args.rounds,
        "threads_option": args.threads,
        "loadavg_before": os.getloadavg(), "configs": {},
    }  # fmt: skip
    running: dict[str, tuple[Any, CloudServer]] = {}
    try:
        # Ray Serve keeps one application per name: every configuration runs at once,
        # and only the one measured is busy (the others hold their replicas idle).
        for name, (engine, replicas, threads) in configs.items():
            running[name] = await start(name, settings_for(engine, replicas, threads, cores),
                                        tmp)  # fmt: skip
            await drive(f"127.0.0.1:{running[name][1].port}", 2, 4)  # warm-up
        levels: dict[str, list[dict[str, Any]]] = {n: [] for n in configs}
        singles: dict[str, list[float]] = {n: [] for n in configs}
        for rnd in range(args.rounds):
            for name in configs:
                target = f"127.0.0.1:{running[name][1].port}"
                lv = await drive(target, args.streams, args.tokens, offset=rnd * 7,
                                 keep_runs=True)  # fmt: skip
                levels[name].append(lv)
                one = await drive(target, 1, args.tokens, offset=rnd)
                singles[name].append(one["tokens_per_s"])
                print(f"  round {rnd + 1} {name}: {args.streams} streams "
                      f"{lv['tokens_per_s']:.1f} tok/s, TTFT p99 {lv['ttft_p99_s'] * 1000:.0f} ms;"
                      f" 1 stream {one['tokens_per_s']:.1f} tok/s", flush=True)  # fmt: skip
        for name, (engine, replicas, threads) in configs.items():
            pooled = pool_rounds(levels[name])
            out["configs"][name] = {
                "engine": engine, "replicas": replicas, "torch_threads_per_replica": threads,
                "tokens_per_s": pooled["tokens_per_s"],
                "tokens_per_s_rounds": pooled["tokens_per_s_rounds"],
                "ttft_p50_s": pooled["ttft_p50_s"], "ttft_p99_s": pooled["ttft_p99_s"],
                "itl_p50_s": pooled["itl_p50_s"],
                "single_stream_tokens_per_s": statistics.median(singles[name]),
                "single_stream_rounds": singles[name],
            }  # fmt: skip
            served = getattr(running[name][0], "served", None)
            if served is not None:
                out["configs"][name]["streams_per_replica"] = sorted(
                    sum(v for (r, _), v in served.items() if r == rep)
                    for rep in {r for r, _ in served}
                )
    finally:
        for _, server in running.values():
            await server.stop(1)
        for name, (backend, _) in running.items():
            if name == "torch":
                backend.close()
        import ray

        ray.shutdown()
    c = out["configs"]
    out["figures"] = {
        "ray1_over_torch_single_stream": c["ray-1"]["single_stream_tokens_per_s"]
        / c["torch"]["single_stream_tokens_per_s"],
        "ray2_over_ray1_tokens_per_s_16": c["ray-2"]["tokens_per_s"] / c["ray-1"]["tokens_per_s"],
        "targets": {"ray1_over_torch_single_stream": ">= 0.9"},
    }
    out["loadavg_after"] = os.getloadavg()
    return out


def plot(out: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = out["configs"]
    names = list(c)
    labels = [f"{n}\n{c[n]['replicas']} x {c[n]['torch_threads_per_replica']} threads"
              for n in names]  # fmt: skip
    colors = ["gray", "C0", "C1"]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(12, 4))
    ax1.bar(labels, [c[n]["tokens_per_s"] for n in names], color=colors)
    ax1.set_ylabel(f"aggregate tokens/s, {out['streams']} streams")
    ax2.bar(labels, [c[n]["ttft_p99_s"] * 1000 for n in names], color=colors)
    ax2.set_ylabel(f"p99 time to first token (ms), {out['streams']} streams")
    ax3.bar(labels, [c[n]["single_stream_tokens_per_s"] for n in names], color=colors)
    ax3.set_ylabel("tokens/s, one stream")
    la = out["loadavg_before"]
    fig.suptitle(f"edgecloud cloud engine: in-process torch vs Ray Serve replicas "
                 f"({out['cpu_count']} cores, {out['new_tokens']} new tokens, "
                 f"loadavg {la[0]:.1f} before)")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(out: dict[str, Any]) -> None:
    print(f"\n{out['streams']} streams, {out['new_tokens']} new tokens, {out['cpu_count']} cores,"
          f" loadavg before {out['loadavg_before']}, after {out['loadavg_after']}")  # fmt: skip
    print(f"{'config':>8} {'tok/s':>8} {'TTFT p50':>10} {'TTFT p99':>10} {'1-stream tok/s':>15}")
    for name, c in out["configs"].items():
        print(f"{name:>8} {c['tokens_per_s']:>8.1f} {c['ttft_p50_s'] * 1000:>8.0f}ms "
              f"{c['ttft_p99_s'] * 1000:>8.0f}ms {c['single_stream_tokens_per_s']:>15.1f}")  # fmt: skip
    for k, v in out["figures"].items():
        if k != "targets":
            print(f"{k}: {v:.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads of every replica (0: all cores for one, half for two)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    parser.add_argument("--replot", action="store_true", help="redraw the plot of --out")
    args = parser.parse_args()
    if args.replot:
        plot(json.loads(args.out.read_text()), args.out.with_suffix(".png"))
        raise SystemExit(0)
    result = asyncio.run(main(args))
    report(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    plot(result, args.out.with_suffix(".png"))
