"""The core hub reader: load failures as DataError, hub images converted exactly as image files are."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from mmllm.data.hub_datasets import EncodedImage, encoded_image, load_hub_split
from mmllm.data.images import load_image
from mmllm.errors import DataError


def rgba_png() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (4, 5, 4), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_hub_id_offline_and_uncached_is_a_data_error_at_once(tmp_path):
    start = time.monotonic()
    with pytest.raises(DataError, match="'nobody-here/no-such-set' .*cannot be loaded"):
        load_hub_split("nobody-here/no-such-set", "validation", cache_dir=str(tmp_path))
    assert time.monotonic() - start < 10  # HF_DATASETS_OFFLINE: no retries against the network


def test_a_missing_local_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="cannot be loaded"):
        load_hub_split(str(tmp_path / "nowhere"), "test", cache_dir=str(tmp_path / "cache"))


def test_encoded_images_take_the_file_conversion(tmp_path):
    data = rgba_png()
    (tmp_path / "a.png").write_bytes(data)
    from_file = np.asarray(load_image(tmp_path / "a.png"))  # a Path has open() too: still read as a file
    from_hub = np.asarray(load_image(EncodedImage(data, None, "set")))
    assert from_hub.shape == (4, 5, 3) and np.array_equal(from_hub, from_file)  # transparent onto white
    by_path = load_image(encoded_image({"bytes": None, "path": str(tmp_path / "a.png")}, "set"))
    assert np.array_equal(np.asarray(by_path), from_file)
    with pytest.raises(DataError, match="set image .* is corrupt or not an image"):
        load_image(EncodedImage(b"not a png", None, "set"))
    with pytest.raises(DataError, match="holds str, not an image"):
        encoded_image("a.png", "set")
