"""Adapter fakes and helpers: a backend with set_adapter, a fake LoRA file, a publisher."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgecloud.adapters._manifest import Manifest
from edgecloud.adapters._registry import AdapterRegistry
from edgecloud.cloud._records import RecordStore
from edgecloud.cloud._server import CloudServer
from edgecloud.cloud._torch import TorchBackend
from edgecloud.config import CloudConfig
from edgecloud.errors import AdapterFormatError, AdapterMismatchError
from edgecloud.transport import hash_token
from edgecloud.types import ChatMessage, Chunk, Finish, SamplingParams

TOKENS = {"robot-1": "tok-one", "robot-2": "tok-two"}
BASE_SHA = hashlib.sha256(b"fake base model").hexdigest()
ARCH = "gemma3"
FAKE_MAGIC = b"FAKELORA"


def fake_lora(path: Path, *, answer: str, arch: str = ARCH, size: int = 0) -> Path:
    """A file the fake backend accepts as a LoRA adapter that makes it answer ``answer``.

    ``size`` pads the file (to test chunked, resumable downloads).
    """
    body = FAKE_MAGIC + f"\n{arch}\n{answer}\n".encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body + b"\0" * max(0, size - len(body)))
    return path


class FakeAdapterBackend:
    """Answers with the loaded adapter's text (or ``base_answer``); validates like the real one.

    ``set_adapter`` refuses files that do not start with the fake magic
    (AdapterFormatError) or name another architecture (AdapterMismatchError),
    before swapping, as the real llama.cpp backend does.
    """

    def __init__(self, base_answer: str = "base answer", arch: str = ARCH) -> None:
        self.base_answer = base_answer
        self.arch = arch
        self._adapter: Path | None = None
        self._answer = base_answer
        self.swaps: list[Path | None] = []
        self.prompts: list[str] = []
        self.used_adapter: list[bool] = []
        self._lock = threading.Lock()

    @property
    def adapter(self) -> Path | None:
        return self._adapter

    def set_adapter(self, path: Path | None, *, scale: float = 1.0) -> float:
        if path is None:
            answer = self.base_answer
        else:
            data = Path(path).read_bytes()
            if not data.startswith(FAKE_MAGIC):
                raise AdapterFormatError(f"{path} is not a LoRA adapter")
            _, arch, answer = data.rstrip(b"\0").decode().split("\n")[:3]
            if arch != self.arch:
                raise AdapterMismatchError(f"adapter is for {arch}, base is {self.arch}")
        with self._lock:
            self._adapter = path
            self._answer = answer
            self.swaps.append(path)
        return 0.001

    def stream(
        self,
        prompt: str | Sequence[ChatMessage],
        params: SamplingParams,
        cancel: threading.Event | None = None,
        *,
        prefix: str = "",
        use_adapter: bool = True,
    ) -> Iterator[Chunk | Finish]:
        self.prompts.append(prompt if isinstance(prompt, str) else prompt[-1].content)
        self.used_adapter.append(use_adapter and self._adapter is not None)
        answer = self._answer if use_adapter else self.base_answer
        words = answer.split(" ")[: params.max_tokens]
        for i, word in enumerate(words):
            yield Chunk(("" if i == 0 else " ") + word, i, -0.1, 0.5, "local", i)
        yield Finish("stop", 3, len(words))


def publish_fake(
    registry: AdapterRegistry,
    key: Ed25519PrivateKey,
    tmp: Path,
    *,
    answer: str = "adapted answer",
    adapter_id: str = "default",
    base_sha: str = BASE_SHA,
    arch: str = ARCH,
    canary: Sequence[Mapping[str, Any]] = (),
    size: int = 0,
    extra: Mapping[str, bytes] | None = None,
    gguf: Path | None = None,
    scope: Mapping[str, Any] | None = None,
    calibration: Mapping[str, Any] | None = None,
) -> Manifest:
    """Publish one version holding a fake ``adapter.gguf`` and a small peft dir."""
    tmp.mkdir(parents=True, exist_ok=True)
    n = len(list(tmp.iterdir()))
    src = tmp / f"v{n}"
    files: dict[str, Path] = {
        "adapter.gguf": gguf or fake_lora(src / "adapter.gguf", answer=answer, arch=arch, size=size)
    }
    (src / "peft").mkdir(parents=True, exist_ok=True)
    (src / "peft" / "adapter_config.json").write_text('{"r": 8}')
    files["peft/adapter_config.json"] = src / "peft" / "adapter_config.json"
    for name, data in (extra or {}).items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
        files[name] = src / name
    kwargs: dict[str, Any] = {
        "adapter_id": adapter_id,
        "base_model_sha256": base_sha,
        "base_architecture": arch,
        "rank": 8,
        "alpha": 16.0,
        "target_modules": ["q_proj", "v_proj"],
        "data": {"records": 10, "train": 8, "holdout": 2},
        "metrics": {"holdout_accuracy": 0.5},
        "canary": list(canary),
        "scope": scope,
        "calibration": calibration,
    }
    return registry.publish(files, key=key, **kwargs)


@asynccontextmanager
async def serving(
    registry: AdapterRegistry,
    tmp: Path,
    *,
    auth: bool = False,
    chunk: int = 64 * 1024,
    port: int = 0,
) -> AsyncIterator[CloudServer]:
    """The real cloud server on 127.0.0.1:0 serving ``registry`` (no inference model)."""
    config = CloudConfig.model_validate({
        "insecure": True, "port": port, "registry": {"chunk_bytes": chunk},
        "auth": {"tokens": {d: hash_token(t) for d, t in TOKENS.items()} if auth else {}},
    })  # fmt: skip
    records = RecordStore(tmp / "records.sqlite3")
    backend = cast(TorchBackend, object())  # never called by AdapterSync
    server = await CloudServer.start(backend, config, records=records, registry=registry)
    try:
        yield server
    finally:
        await server.stop(0)


def make_lora_dir(
    out: Path,
    *,
    n_layers: int = 2,
    rank: int = 4,
    b_std: float = 0.0,
    seed: int = 0,
    hidden: int = 640,
    q_out: int = 1024,
    v_out: int = 256,
    architecture: str = ARCH,
) -> Path:
    """An exported adapter dir (``adapter.gguf`` + ``peft/``) made without torch.

    The default shapes fit Gemma 3 270M's q/v projections, so llama.cpp loads the
    GGUF onto the default model; ``b_std`` > 0 makes it change the model's output.
    """
    import json

    import numpy as np
    from safetensors.numpy import save_file

    from edgecloud.adapters._gguf import export_lora_gguf

    peft = out / "peft"
    peft.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "bias": "none",
              "target_modules": ["q_proj", "v_proj"]}  # fmt: skip
    (peft / "adapter_config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(seed)
    tensors = {}
    for i in range(n_layers):
        for module, rows in (("q_proj", q_out), ("v_proj", v_out)):
            name = f"base_model.model.model.layers.{i}.self_attn.{module}"
            tensors[f"{name}.lora_A.weight"] = rng.normal(0, 0.02, (rank, hidden)).astype("f4")
            tensors[f"{name}.lora_B.weight"] = rng.normal(0, b_std, (rows, rank)).astype("f4")
    save_file(tensors, str(peft / "adapter_model.safetensors"))
    export_lora_gguf(peft, out / "adapter.gguf", architecture=architecture)
    return out
