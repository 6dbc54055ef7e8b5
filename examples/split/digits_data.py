"""The digits data set as the split-inference examples and benchmarks use it.

scikit-learn ships the 8x8 digits, so nothing is downloaded. Each image is
upsampled to 64x64 (bilinear-free nearest repeat, exact and cheap) so that the
raw input is 16 KiB in float32: large enough that shipping it over a slow link
costs more than running the first layers on the device, which is the trade-off
split inference exists for.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

__all__ = ["SIDE", "Digits", "load"]

SIDE = 64
"""Height and width of the model input."""


class Digits(NamedTuple):
    """Deterministic train / calibration / test splits, images as N x 1 x 64 x 64 float32."""

    x_train: npt.NDArray[np.float32]
    y_train: npt.NDArray[np.int64]
    x_calib: npt.NDArray[np.float32]
    y_calib: npt.NDArray[np.int64]
    x_test: npt.NDArray[np.float32]
    y_test: npt.NDArray[np.int64]


def _prepare(images: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    scale = SIDE // images.shape[-1]
    x = np.repeat(np.repeat(images, scale, axis=1), scale, axis=2) / 16.0
    return x[:, None, :, :].astype(np.float32)


def load() -> Digits:
    """60% train, 20% calibration (cascade threshold), 20% test, stratified, seed 0."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = _prepare(data.images)
    y = data.target.astype(np.int64)
    x_train, x_rest, y_train, y_rest = train_test_split(
        x, y, test_size=0.4, random_state=0, stratify=y
    )
    x_calib, x_test, y_calib, y_test = train_test_split(
        x_rest, y_rest, test_size=0.5, random_state=0, stratify=y_rest
    )
    return Digits(x_train, y_train, x_calib, y_calib, x_test, y_test)
