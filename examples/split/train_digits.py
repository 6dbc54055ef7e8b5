"""Train the two digits classifiers used by split inference, from scratch and deterministically.

    python examples/split/train_digits.py            # writes examples/split/models/*.onnx
    python examples/split/train_digits.py --check    # retrain and fail if the files differ

* ``digits_cnn.onnx``: the device model, four conv blocks then two dense layers.
  Its activations shrink from 256 KiB (first conv) to 40 bytes (logits), so
  every cut trades device compute against bytes on the wire differently.
* ``digits_cloud.onnx``: the larger cloud model (2x the channels, a third dense
  layer, dropout, more epochs and random-shift augmentation) for the
  confidence cascade.

Determinism: fixed seeds, ``torch.use_deterministic_algorithms(True)``, one
intra-op thread (parallel reductions may sum in another order), and a fixed
data split (``digits_data.load``). The exported graphs are therefore
byte-identical from run to run on the same torch build.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import digits_data

MODELS = Path(__file__).resolve().parent / "models"


def _block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]


def device_cnn() -> nn.Module:
    return nn.Sequential(
        *_block(1, 16), *_block(16, 32), *_block(32, 64), *_block(64, 64),
        nn.Flatten(), nn.Linear(64 * 4 * 4, 256), nn.ReLU(), nn.Linear(256, 10),
    )  # fmt: skip


def cloud_cnn() -> nn.Module:
    return nn.Sequential(
        *_block(1, 32), *_block(32, 64), *_block(64, 128), *_block(128, 128),
        nn.Flatten(), nn.Linear(128 * 4 * 4, 256), nn.ReLU(), nn.Dropout(0.3),
        nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10),
    )  # fmt: skip


def _shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    # Random translations of up to one source pixel (8 px at 64x64): the cloud model
    # sees more varied digits than the device model, which is what makes it better.
    dx, dy = (int(v) for v in torch.randint(-8, 9, (2,), generator=gen))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def train(
    model: nn.Module, data: digits_data.Digits, *, epochs: int, seed: int, augment: bool
) -> float:
    torch.manual_seed(seed)
    x = torch.from_numpy(data.x_train)
    y = torch.from_numpy(data.y_train)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            idx = order[i : i + 64]
            opt.zero_grad()
            xb = _shift(x[idx], gen) if augment else x[idx]
            loss = nn.functional.cross_entropy(model(xb), y[idx])
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(data.x_test)).argmax(1).numpy()
    return float((pred == data.y_test).mean())


def export(model: nn.Module, path: Path) -> None:
    dummy = torch.zeros(1, 1, digits_data.SIDE, digits_data.SIDE)
    torch.onnx.export(
        model, (dummy,), str(path), input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17, dynamo=False,
    )  # fmt: skip


def build(out: Path) -> dict[str, float]:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    data = digits_data.load()
    accuracy = {}
    for name, factory, epochs, seed, augment in (
        ("digits_cnn", device_cnn, 3, 0, False),
        ("digits_cloud", cloud_cnn, 15, 1, True),
    ):
        torch.manual_seed(seed)
        np.random.seed(seed)
        model = factory()
        t0 = time.perf_counter()
        accuracy[name] = train(model, data, epochs=epochs, seed=seed, augment=augment)
        export(model, out / f"{name}.onnx")
        took = time.perf_counter() - t0
        print(f"{name}: test accuracy {accuracy[name]:.4f}, trained in {took:.1f}s")
    return accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="retrain and compare with the files")
    args = parser.parse_args()
    if not args.check:
        MODELS.mkdir(parents=True, exist_ok=True)
        build(MODELS)
        return
    with tempfile.TemporaryDirectory() as tmp:
        build(Path(tmp))
        for path in sorted(Path(tmp).glob("*.onnx")):
            new = hashlib.sha256(path.read_bytes()).hexdigest()
            old = hashlib.sha256((MODELS / path.name).read_bytes()).hexdigest()
            print(f"{path.name}: {'same' if new == old else 'DIFFERENT'}")
            if new != old:
                sys.exit(1)


if __name__ == "__main__":
    main()
