"""COCO and Flickr30k Karpathy captions from the hub layouts (yerevann/coco-karpathy: captions only, the
images COCO files under image_root; nlphuji/flickr30k: the images in the rows, one hub split 'test' whose
``split`` column holds train/val/test): small parquet files written here, read offline, never downloaded."""

from __future__ import annotations

import numpy as np
import pytest
from datasets import Dataset, Features, Image, List, Value
from PIL import Image as PILImage
from torchvision.transforms import PILToTensor

from mmllm.data.captions import CaptionDataOptions, CaptionPairs, load_captions
from mmllm.data.images import load_image
from mmllm.engine.preprocess import Preprocess
from mmllm.errors import ConfigError, DataError

COCO = Features(
    {
        "filepath": Value("string"),
        "sentids": List(Value("int64")),
        "filename": Value("string"),
        "imgid": Value("int64"),
        "split": Value("string"),
        "sentences": List(Value("string")),
        "cocoid": Value("int64"),
        "url": Value("string"),
    }
)
FLICKR = Features(
    {
        "image": Image(),
        "caption": List(Value("string")),
        "sentids": List(Value("string")),
        "split": Value("string"),
        "img_id": Value("string"),
        "filename": Value("string"),
    }
)


def picture(seed: int) -> PILImage.Image:
    return PILImage.fromarray(np.random.default_rng(seed).integers(0, 256, (6, 4, 3), dtype=np.uint8))


def pixels(image) -> np.ndarray:
    return PILToTensor()(image).numpy()


def write_split(folder, split: str, columns: dict, features: Features) -> None:
    """``<folder>/data/<split>-00000-of-00001.parquet``: the file name the hub gives a split."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    Dataset.from_dict(columns, features=features).to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))


def coco_rows(split: str, ids: list[int]) -> dict:
    folder = "val2014" if split != "train" else "train2014"
    names = [f"COCO_{folder}_{i:012d}.jpg" for i in ids]
    return {
        "filepath": [folder] * len(ids),
        "sentids": [[10 * i, 10 * i + 1] for i in ids],
        "filename": names,
        "imgid": ids,
        "split": [split] * len(ids),
        "sentences": [[f"caption {i} a", f"caption {i} b"] for i in ids],
        "cocoid": ids,
        "url": [f"http://images.cocodataset.org/{folder}/{n}" for n in names],
    }


@pytest.fixture
def coco(tmp_path):
    """yerevann/coco-karpathy's hub splits train, restval, test; the COCO images as files."""
    folder, root = tmp_path / "coco-karpathy", tmp_path / "coco"
    for split, ids in (("train", [1, 2]), ("restval", [3]), ("test", [4, 5, 6])):
        columns = coco_rows(split, ids)
        write_split(folder, split, columns, COCO)
        for path, name, i in zip(columns["filepath"], columns["filename"], ids):
            (root / path).mkdir(parents=True, exist_ok=True)
            picture(i).save(root / path / name, format="PNG")  # (PNG bytes under COCO's .jpg name)
    return folder, root


FLICKR_SPLITS = ["train", "val", "test", "val", "train"]


@pytest.fixture
def flickr(tmp_path):
    """nlphuji/flickr30k: one hub split 'test' holding every image, its Karpathy split in the split column."""
    folder = tmp_path / "flickr30k"
    n = len(FLICKR_SPLITS)
    columns = {
        "image": [picture(100 + i) for i in range(n)],
        "caption": [[f"photo {i} one", f"photo {i} two", f"photo {i} three"] for i in range(n)],
        "sentids": [[str(3 * i + k) for k in range(3)] for i in range(n)],
        "split": FLICKR_SPLITS,
        "img_id": [str(i) for i in range(n)],
        "filename": [f"{1000 + i}.jpg" for i in range(n)],
    }
    write_split(folder, "test", columns, FLICKR)
    return folder


def split_spec(tmp_path, **split):
    hub = split.pop("hub")
    options = CaptionDataOptions.parse(
        {"splits": {"s": {**split, "hub": {"cache_dir": str(tmp_path / "cache"), **hub}}}}, "datasets.x"
    )
    return options.splits["s"]


@pytest.mark.parametrize("streaming", [False, True])
def test_coco_karpathy_rows_resolve_against_the_image_root(tmp_path, coco, streaming):
    folder, root = coco
    hub = {"path": str(folder), "split": "train+restval", "layout": "coco_karpathy", "streaming": streaming}
    items = load_captions(split_spec(tmp_path, hub=hub, image_root=str(root)))
    ids = [1, 2, 3]  # Karpathy's training set: train + restval
    assert [i.captions for i in items] == [[f"caption {i} a", f"caption {i} b"] for i in ids]
    for item, i in zip(items, ids):
        assert item.source is None and item.image_path.endswith(f"_{i:012d}.jpg")
        assert np.array_equal(pixels(load_image(item.image)), pixels(picture(i)))


@pytest.mark.parametrize("streaming", [False, True])
def test_flickr30k_rows_hold_their_images(tmp_path, flickr, streaming):
    hub = {"path": str(flickr), "split": "test", "layout": "flickr30k", "where": {"split": "val"}}
    items = load_captions(split_spec(tmp_path, hub={**hub, "streaming": streaming}))
    val = [i for i, s in enumerate(FLICKR_SPLITS) if s == "val"]
    assert [i.image_path for i in items] == [f"{flickr}/{1000 + i}.jpg" for i in val]
    assert [i.captions for i in items] == [[f"photo {i} one", f"photo {i} two", f"photo {i} three"] for i in val]
    for item, i in zip(items, val):
        file = tmp_path / f"{i}.png"
        picture(100 + i).save(file)
        assert np.array_equal(pixels(load_image(item.image)), pixels(load_image(file)))  # as a file is read


def test_streaming_gives_the_records_of_the_stored_split(tmp_path, flickr):
    hub = {"path": str(flickr), "split": "test", "layout": "flickr30k", "where": {"split": "train"}}
    stored = load_captions(split_spec(tmp_path / "a", hub=hub))
    streamed = load_captions(split_spec(tmp_path / "b", hub={**hub, "streaming": True}))
    assert [(i.image_path, i.captions) for i in streamed] == [(i.image_path, i.captions) for i in stored]
    for a, b in zip(stored, streamed):
        assert np.array_equal(pixels(load_image(a.image)), pixels(load_image(b.image)))
    assert not list((tmp_path / "b" / "cache").rglob("*.arrow"))  # the stream prepared no copy of the split


def test_the_retrieval_benchmark_reads_hub_splits(tmp_path, flickr, coco):
    from mmllm.engine.run_config import RunConfig
    from mmllm_retrieval.benchmark import RetrievalBenchmark, RetrievalEvalSet

    folder, root = coco
    cache = str(tmp_path / "cache")
    data = CaptionDataOptions.parse(
        {
            "splits": {
                "train": {
                    "hub": {"path": str(folder), "split": "train", "layout": "coco_karpathy", "cache_dir": cache},
                    "image_root": str(root),
                },
                "test": {
                    "hub": {"path": str(flickr), "split": "test", "layout": "flickr30k", "where": {"split": "test"}},
                },
            }
        },
        "datasets.mmllm_retrieval",
    )
    run = RunConfig.parse({"task": "mmllm_retrieval", "output_dir": str(tmp_path / "run")}, "run")
    sets = RetrievalBenchmark(data, run, "datasets.mmllm_retrieval").build_datasets(Preprocess.shared(PILToTensor()))
    assert isinstance(sets["train"], CaptionPairs) and len(sets["train"]) == 4
    assert sets["train"][1]["caption"] == "caption 1 b" and sets["train"][1]["image_index"] == 0
    assert np.array_equal(sets["train"][2]["image"].numpy(), pixels(picture(2)))
    test = sets["test"]
    assert (
        isinstance(test, RetrievalEvalSet)
        and len(test) == 1
        and test.texts == ["photo 2 one", "photo 2 two", "photo 2 three"]
    )
    assert np.array_equal(test.images()[0]["image"].numpy(), pixels(picture(102)))


def test_refusals_name_what_is_wrong(tmp_path, coco, flickr):
    folder, root = coco
    with pytest.raises(DataError, match=r"lacks column\(s\) \['caption', 'image'\]"):
        load_captions(split_spec(tmp_path, hub={"path": str(folder), "split": "test", "layout": "flickr30k"}))
    with pytest.raises(DataError, match="unknown caption layout 'karpathy'"):
        load_captions(split_spec(tmp_path, hub={"path": str(folder), "split": "test", "layout": "karpathy"}))
    with pytest.raises(DataError, match="holds no images: set the split's image_root"):
        load_captions(split_spec(tmp_path, hub={"path": str(folder), "split": "test", "layout": "coco_karpathy"}))
    missing = {"path": str(folder), "split": "test", "layout": "coco_karpathy"}
    with pytest.raises(DataError, match=r"3 image\(s\) missing"):
        load_captions(split_spec(tmp_path, hub=missing, image_root=str(tmp_path / "nowhere")))
    nothing = {"path": str(flickr), "split": "test", "layout": "flickr30k", "where": {"split": "restval"}}
    with pytest.raises(DataError, match="has no rows"):
        load_captions(split_spec(tmp_path, hub=nothing))
    empty = coco_rows("val", [7, 8])
    empty["sentences"][1] = []
    write_split(tmp_path / "empty", "validation", empty, COCO)
    bad = {"path": str(tmp_path / "empty"), "split": "validation", "layout": "coco_karpathy"}
    with pytest.raises(DataError, match="COCO_val2014_000000000008.jpg has an empty caption list"):
        load_captions(split_spec(tmp_path, hub=bad, image_root=str(root)), check_images=False)
    with pytest.raises(ConfigError, match="either annotation .* or hub"):
        split_spec(tmp_path, hub=nothing, annotation="a.json", image_root=str(root))
