"""Image classification data: ImageFolder splits and their bad inputs, MNIST, the corruptions."""

import gzip
import json
import pickle

import numpy as np
import pytest
import scipy.ndimage
import torch
from PIL import Image

from mmllm.errors import ConfigError, DataError
from vision.classification import corruptions, data
from vision.classification.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from vision.classification.data import ImageFolderSplit, load_corrupted


def write_png(path, value=128, size=8, mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((size, size) if mode == "L" else (size, size, 3), value, dtype=np.uint8)
    Image.fromarray(pixels, mode=mode).save(path)
    return path


def tree(root, layout):
    """layout: {class: number of images}."""
    for name, count in layout.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            write_png(folder / f"img{i}.png", value=10 * i)
    return root


# ------------------------------------------------------------------ ImageFolder
def test_image_folder_classes_labels_keys_and_per_class(tmp_path):
    root = tree(tmp_path / "train", {"cat": 3, "ant": 2, "dog": 1})
    (root / ".ipynb_checkpoints").mkdir()  # a hidden folder is not a class
    write_png(root / "ant" / "._img0.png")  # a macOS resource fork is not an image
    (root / "ant" / "notes.txt").write_text("not an image")
    split = ImageFolderSplit(root)
    assert split.classes == ["ant", "cat", "dog"]  # sorted, as torchvision's ImageFolder
    assert split.keys == [
        "ant/img0.png",
        "ant/img1.png",
        "cat/img0.png",
        "cat/img1.png",
        "cat/img2.png",
        "dog/img0.png",
    ]
    assert split.targets == [0, 0, 1, 1, 1, 2]
    item = split[3]
    assert item["label"] == 1 and item["index"] == 3 and item["image"].mode == "RGB"
    assert np.asarray(item["image"])[0, 0].tolist() == [10, 10, 10]  # cat/img1.png: value 10, grey -> RGB
    limited = ImageFolderSplit(root, per_class=2)
    assert limited.keys == ["ant/img0.png", "ant/img1.png", "cat/img0.png", "cat/img1.png", "dog/img0.png"]


def test_empty_class_folder_is_named(tmp_path):
    root = tree(tmp_path / "train", {"a": 2, "b": 0})
    with pytest.raises(DataError, match=r"empty class folder.*train/b"):
        ImageFolderSplit(root)


def test_no_class_folders_and_missing_folder(tmp_path):
    (tmp_path / "flat").mkdir()
    write_png(tmp_path / "flat" / "x.png")
    with pytest.raises(DataError, match="no class sub-folders"):
        ImageFolderSplit(tmp_path / "flat")
    with pytest.raises(DataError, match="does not exist"):
        ImageFolderSplit(tmp_path / "nowhere")


def test_undecodable_image_is_named(tmp_path):
    root = tree(tmp_path / "train", {"a": 2})
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really")
    split = ImageFolderSplit(root)  # found by extension ...
    index = split.keys.index("a/broken.png")
    with pytest.raises(DataError, match="broken.png"):  # ... and named when it is read
        split[index]
    with pytest.raises(DataError, match="broken.png"):  # or at once with verify
        ImageFolderSplit(root, verify=True)


def test_val_classes_must_equal_train_classes(tmp_path):
    train = ImageFolderSplit(tree(tmp_path / "train", {"a": 1, "b": 1, "c": 1}))
    with pytest.raises(DataError, match=r"missing \['c'\], not in the training class list \['z'\]"):
        ImageFolderSplit(tree(tmp_path / "val", {"a": 1, "b": 1, "z": 1}), train.classes, what="val")
    with pytest.raises(DataError, match=r"missing \['c'\]"):
        ImageFolderSplit(tree(tmp_path / "val2", {"a": 1, "b": 1}), train.classes)


def test_corrupted_tree_layout(tmp_path):
    classes = ["a", "b"]
    for name, level in (("noise", "1"), ("noise", "2"), ("blur", "1")):
        tree(tmp_path / "c" / name / level, {"a": 1, "b": 2})
    sets = load_corrupted(tmp_path / "c", classes, None)
    assert sorted(sets) == [("blur", 1), ("noise", 1), ("noise", 2)]
    assert len(sets[("noise", 2)]) == 3
    tree(tmp_path / "c" / "fog" / "heavy", {"a": 1, "b": 1})
    with pytest.raises(DataError, match="severity folders"):
        load_corrupted(tmp_path / "c", classes, None)
    tree(tmp_path / "d" / "noise" / "1", {"a": 1, "q": 1})
    with pytest.raises(DataError, match="not in the training class list"):
        load_corrupted(tmp_path / "d", classes, None)


# ------------------------------------------------------------------ MNIST
def test_load_mnist_is_the_real_mnist():
    from mmllm.data.mnist import load_mnist

    train_x, train_y = load_mnist("train")
    test_x, test_y = load_mnist("test")
    val_x, _ = load_mnist("val")
    assert train_x.shape == (50000, 28, 28) and train_x.dtype == np.uint8 and train_y.dtype == np.int64
    assert test_x.shape == (10000, 28, 28) and val_x.shape == (10000, 28, 28)
    # the first labels of LeCun's training and test files
    assert train_y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert test_y[:5].tolist() == [7, 2, 1, 0, 4]
    assert np.bincount(test_y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert train_x.max() == 255 and train_x.min() == 0
    with pytest.raises(DataError, match="split must be one of"):
        load_mnist("validation")


def test_mnist_unpickler_refuses_code(tmp_path):
    from mmllm.data.mnist import _load_all

    bad = tmp_path / "mnist.pkl.gz"
    with gzip.open(bad, "wb") as handle:
        pickle.dump(((np.zeros((1, 784), np.float32), np.zeros(1, np.int64)),) * 2 + (print,), handle)
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        _load_all(str(bad))


def test_prepare_mnist_writes_an_image_folder_tree_once(tmp_path, monkeypatch):
    from mmllm.data.mnist import load_mnist

    monkeypatch.setattr(data, "MNIST_SPLITS", {"train": ("train", 2), "val": ("val", 1), "test": ("test", 1)})
    monkeypatch.setattr(data, "MNIST_CORRUPTED_PER_CLASS", 1)
    root = data.prepare_mnist(tmp_path / "mnist")
    info = json.loads((root / data.MNIST_MARKER).read_text())
    assert info["images"] == {"train": 20, "val": 10, "test": 10, "corrupted": 10 * 4 * 3}
    train = ImageFolderSplit(root / "train")
    assert train.classes == [str(d) for d in range(10)] and len(train) == 20
    images, labels = load_mnist("train")
    assert train.keys[:2] == ["0/00001.png", "0/00021.png"]  # the first two zeros of the training set
    assert labels[1] == 0 and labels[21] == 0
    np.testing.assert_array_equal(np.asarray(Image.open(root / "train/0/00001.png")), images[1])  # lossless
    corrupted = load_corrupted(root / "corrupted", train.classes, None)
    assert sorted(corrupted) == sorted((n, s) for n in CORRUPTIONS for s in SEVERITIES)
    first_test = ImageFolderSplit(root / "test").keys[0]
    assert (root / "corrupted/elastic/3" / first_test).is_file()
    # idempotent: a second call leaves the finished tree alone
    stamp = (root / "train/0/00001.png").stat().st_mtime_ns
    data.prepare_mnist(root)
    assert (root / "train/0/00001.png").stat().st_mtime_ns == stamp
    assert not list(tmp_path.glob(".mnist.tmp*"))  # no temp folder left
    # a folder holding something else is not overwritten
    other = tmp_path / "mine"
    write_png(other / "x" / "y.png")
    with pytest.raises(DataError, match="not a finished MNIST tree"):
        data.prepare_mnist(other)


# ------------------------------------------------------------------ corruptions
@pytest.fixture(scope="module")
def digits():
    from mmllm.data.mnist import load_mnist

    images, _ = load_mnist("test")
    return [torch.from_numpy(images[i].astype(np.float32) / 255)[None] for i in range(6)]


def test_corruptions_are_deterministic_and_keyed(digits):
    x = digits[0]
    for name in CORRUPTIONS:
        a, b = corrupt(x, name, 2, "7/0.png", seed=3), corrupt(x, name, 2, "7/0.png", seed=3)
        assert torch.equal(a, b), name
    for name in ("gaussian_noise", "elastic"):  # random ones depend on the key and the seed
        assert not torch.equal(corrupt(x, name, 2, "a", 0), corrupt(x, name, 2, "b", 0))
        assert not torch.equal(corrupt(x, name, 2, "a", 0), corrupt(x, name, 2, "a", 1))


def test_corruption_values_stay_in_range(digits):
    x = torch.rand(3, 20, 24)
    x[:, 0, 0], x[:, 1, 1] = 0.0, 1.0
    for image in (x, digits[1]):
        for name in CORRUPTIONS:
            for severity in SEVERITIES:
                out = corrupt(image, name, severity, "k")
                assert out.shape == image.shape and out.dtype == torch.float32
                assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()


def test_severity_moves_images_further_from_clean(digits):
    for name in CORRUPTIONS:
        distance = [
            np.mean([(corrupt(x, name, s, str(i)) - x).abs().mean().item() for i, x in enumerate(digits)])
            for s in SEVERITIES
        ]
        assert distance[0] > 0.005 and distance[0] < distance[1] < distance[2], (name, distance)


def test_contrast_and_blur_match_the_formulas(digits):
    x = digits[2]
    for severity in SEVERITIES:
        c = CORRUPTIONS["contrast"][severity - 1]
        expected = ((x - x.mean()) * c + x.mean()).clamp(0, 1)  # ImageNet-C's contrast on a grey image
        torch.testing.assert_close(corrupt(x, "contrast", severity, "k"), expected, atol=1e-6, rtol=0)
        sigma = CORRUPTIONS["gaussian_blur"][severity - 1] * 28
        reference = scipy.ndimage.gaussian_filter(x[0].numpy().astype(np.float64), sigma, mode="mirror", truncate=4.0)
        np.testing.assert_allclose(corrupt(x, "gaussian_blur", severity, "k")[0].numpy(), reference, atol=1e-5)


def test_gaussian_noise_has_the_stated_std():
    grey = torch.full((1, 64, 64), 0.5)
    for severity in SEVERITIES:
        sigma = CORRUPTIONS["gaussian_noise"][severity - 1]
        noise = corrupt(grey, "gaussian_noise", severity, "k") - grey
        inside = noise.abs() < 0.5  # pixels that were not clipped
        assert abs(noise.mean().item()) < 0.02
        if severity == 1:  # 0.1: nothing clips (5 sigma)
            assert inside.all()
            assert abs(noise.std().item() - sigma) < 0.01


def test_corruption_arguments_are_checked():
    with pytest.raises(ConfigError, match="unknown corruption"):
        corrupt(torch.zeros(1, 4, 4), "fog", 1, "k")
    with pytest.raises(ConfigError, match="severity"):
        corrupt(torch.zeros(1, 4, 4), "contrast", 4, "k")


def test_corrupt_folder_writes_imagenet_c_layout(tmp_path):
    src = tree(tmp_path / "test", {"a": 2, "b": 1})
    colour = np.zeros((8, 8, 3), np.uint8)
    colour[..., 0] = 200
    Image.fromarray(colour, mode="RGB").save(src / "b" / "rgb.png")
    count = corruptions.corrupt_folder(src, tmp_path / "c", seed=0, names=("contrast", "gaussian_noise"))
    assert count == 4 * 2 * 3
    noisy = np.asarray(Image.open(tmp_path / "c/gaussian_noise/3/a/img1.png"))
    assert noisy.ndim == 2  # a grey image stays grey
    assert np.asarray(Image.open(tmp_path / "c/gaussian_noise/3/b/rgb.png")).shape == (8, 8, 3)
    assert len(load_corrupted(tmp_path / "c", ["a", "b"], None)) == 6
    with pytest.raises(ConfigError, match="not empty"):
        corruptions.corrupt_folder(src, tmp_path / "c")
