"""Build the two split-inference showcase models: random weights, exported to ONNX in seconds.

    python examples/split/build_models.py          # examples/split/models/{vgg_small,encoder}.onnx
    python examples/split/build_models.py --out DIR --small   # tiny versions (tests)

* ``vgg_small.onnx``: an image model at 3x224x224 whose features shrink through
  the network: a cheap strided stem with early pooling takes 224x224 down to
  14x14x32 (12 KiB in float16, a 24th of the input), then the expensive part
  (four 3x3 convolutions at 14x14 with 192 channels), global pooling and a
  1000-way classifier. On a slow device and a middling link, sending the 14x14
  features beats both running everything here and sending the image.
* ``encoder.onnx``: a small transformer encoder (token ids and an attention
  mask in, hidden states out, four pre-norm layers). The mask is turned into an
  additive bias once and read by every layer, and every layer has two residual
  connections, so no single tensor separates the graph in the middle: every
  middle cut is a set (hidden state + mask bias).

Weights are random (seeded): split inference moves activations, and their
sizes and the compute per layer do not depend on what the weights learned.
No weights are downloaded. Batch and sequence length are dynamic axes.
"""

from __future__ import annotations

import argparse
import math
import warnings
from pathlib import Path

import torch
from torch import nn

MODELS = Path(__file__).resolve().parent / "models"


def vgg_small(width: int = 192, stem: int = 32) -> nn.Module:
    """224 -> 56 (stride-2 conv + pool) -> 28 -> 14, then the heavy 14x14 stage."""

    def conv(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.ReLU()]

    return nn.Sequential(
        *conv(3, 16, stride=2), nn.MaxPool2d(2),          # 56x56x16
        *conv(16, 32), nn.MaxPool2d(2),                   # 28x28x32
        *conv(32, stem), nn.MaxPool2d(2),                 # 14x14xstem: the narrow waist
        *conv(stem, width), *conv(width, width), *conv(width, width), *conv(width, width),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 1000),
    )  # fmt: skip


class _Layer(nn.Module):
    def __init__(self, d: int, heads: int, ff: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Linear(ff, d))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (t.reshape(b, s, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(d // self.heads) + bias
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, s, d)
        x = x + self.proj(y)
        return x + self.ff(self.ln2(x))


class Encoder(nn.Module):
    """Token ids and a 0/1 attention mask in, hidden states out."""

    def __init__(
        self, vocab: int = 4096, d: int = 192, layers: int = 4, heads: int = 4, ff: int = 768
    ) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(1, 512, d) * 0.02)
        self.layers = nn.ModuleList(_Layer(d, heads, ff) for _ in range(layers))
        self.norm = nn.LayerNorm(d)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        s = input_ids.shape[1]
        x = self.tok(input_ids) + self.pos[:, :s]
        # computed once from the mask, read by every layer: the second tensor of every cut
        bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -1e4
        for layer in self.layers:
            x = layer(x, bias)
        return self.norm(x)


def export_vgg(path: Path, small: bool = False) -> Path:
    torch.manual_seed(0)
    model = vgg_small(width=32, stem=16) if small else vgg_small()
    size = 64 if small else 224
    x = torch.rand(1, 3, size, size)
    _export(model, (x,), path, ["input"], ["logits"], {"input": {0: "batch"}})
    return path


def export_encoder(path: Path, small: bool = False, seq: int = 128) -> Path:
    torch.manual_seed(0)
    model = Encoder(vocab=256, d=32, layers=2, heads=2, ff=64) if small else Encoder()
    ids = torch.randint(0, 256 if small else 4096, (1, seq))
    mask = torch.ones(1, seq, dtype=torch.int64)
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
    _export(model, (ids, mask), path, ["input_ids", "attention_mask"], ["hidden"], axes)
    return path


def _export(
    model: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    inputs: list[str],
    outputs: list[str],
    axes: dict[str, dict[int, str]],
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    # The TorchScript exporter (dynamo=False: no onnxscript needed) is deprecated and
    # warns about Python scalars in the trace; both are expected here.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, args, str(path), input_names=inputs, output_names=outputs,
            dynamic_axes=axes, opset_version=17, dynamo=False,
        )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=MODELS)
    parser.add_argument("--small", action="store_true", help="tiny versions, for tests")
    args = parser.parse_args()
    for p in (
        export_vgg(args.out / "vgg_small.onnx", args.small),
        export_encoder(args.out / "encoder.onnx", args.small),
    ):
        print(f"wrote {p} ({p.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
