"""Composed configs (mmllm/config.py, ``_base_``): a run config names a benchmark's data file and a model
file instead of copying them. Small hand-written files for the rules; the shipped configs for the shares."""

import shutil
from argparse import Namespace
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from mmllm.config import load_config, load_yaml
from mmllm.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
RUN = {"task": "toy", "lr": 1.0}


def write(path: Path, content) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
    return path


def plain(cfg):
    return OmegaConf.to_container(cfg, resolve=True)


# ---------------------------------------------------------------- the rules, on hand-written files
def test_a_chain_of_bases_each_relative_to_its_own_file(tmp_path):
    write(tmp_path / "shared/deeper/c.yaml", {"model": {"width": 1, "depth": 1, "act": "gelu"}, "run": RUN})
    write(
        tmp_path / "shared/b.yaml", {"_base_": "deeper/c.yaml", "model": {"width": 2}, "datasets": {"d": {"root": "x"}}}
    )
    top = write(tmp_path / "runs/a.yaml", {"_base_": "../shared/b.yaml", "model": {"depth": 3}})
    assert plain(load_config(top)) == {
        "model": {"width": 2, "depth": 3, "act": "gelu"},
        "datasets": {"d": {"root": "x"}},
        "run": RUN,
    }


def test_a_mapping_level_base_places_one_file_under_any_key(tmp_path):
    """The same benchmark file under two dataset keys, each with keys of its own on top."""
    write(tmp_path / "benchmarks/b.yaml", {"root": "data/b", "splits": {"train": {"file": "t.json"}}})
    top = write(
        tmp_path / "runs/a.yaml",
        {
            "model": {"_base_": "../models/m.yaml", "arch": "one"},
            "datasets": {
                "x": {"_base_": "../benchmarks/b.yaml", "n": 3},
                "y": {"_base_": "../benchmarks/b.yaml", "root": "elsewhere"},
            },
            "run": RUN,
        },
    )
    write(tmp_path / "models/m.yaml", {"width": 8})
    cfg = plain(load_config(top))
    assert cfg["model"] == {"width": 8, "arch": "one"}
    assert cfg["datasets"]["x"] == {"root": "data/b", "splits": {"train": {"file": "t.json"}}, "n": 3}
    assert cfg["datasets"]["y"] == {"root": "elsewhere", "splits": {"train": {"file": "t.json"}}}


def test_bases_merge_in_order_the_file_on_top_and_options_last(tmp_path):
    write(tmp_path / "one.yaml", {"model": {"a": 1, "b": 1, "c": 1}, "datasets": {}, "run": {"task": "t", "lr": 1}})
    write(tmp_path / "two.yaml", {"model": {"b": 2, "c": 2}})
    top = write(tmp_path / "top.yaml", {"_base_": ["one.yaml", "two.yaml"], "model": {"c": 3}})
    assert plain(load_config(top).model) == {"a": 1, "b": 2, "c": 3}
    cfg = load_config(top, ["model.c=4", "model.a=5", "run.lr=0.5"])  # --options: over the composed config
    assert plain(cfg.model) == {"a": 5, "b": 2, "c": 4} and cfg.run.lr == 0.5


def test_lists_are_replaced_not_concatenated_and_null_does_not_delete(tmp_path):
    """OmegaConf's merge: a list on top replaces the base's list; ``key: null`` sets null (no key is removed)."""
    write(tmp_path / "base.yaml", {"model": {"layers": [1, 2, 3], "extra": {"k": 1}}, "datasets": {}, "run": RUN})
    top = write(tmp_path / "top.yaml", {"_base_": "base.yaml", "model": {"layers": [9], "extra": None}})
    assert plain(load_config(top).model) == {"layers": [9], "extra": None}


def test_interpolations_resolve_against_the_composed_config(tmp_path):
    write(tmp_path / "bench.yaml", {"root": "data/b", "train": "${.root}/train.json"})  # relative: placement-free
    top = write(
        tmp_path / "top.yaml", {"model": {}, "run": RUN, "datasets": {"x": {"_base_": "bench.yaml", "root": "mine"}}}
    )
    assert load_config(top).datasets.x.train == "mine/train.json"


def test_a_base_used_twice_is_no_cycle(tmp_path):
    write(tmp_path / "common.yaml", {"root": "r"})
    write(tmp_path / "a.yaml", {"_base_": "common.yaml", "a": 1})
    top = write(
        tmp_path / "top.yaml",
        {"model": {"_base_": "common.yaml"}, "run": RUN, "datasets": {"x": {"_base_": ["a.yaml", "common.yaml"]}}},
    )
    cfg = plain(load_config(top))
    assert cfg["model"] == {"root": "r"} and cfg["datasets"]["x"] == {"root": "r", "a": 1}


def test_a_missing_base_names_the_including_file_and_key(tmp_path):
    top = write(tmp_path / "top.yaml", {"model": {}, "run": RUN, "datasets": {"x": {"_base_": "nope/b.yaml"}}})
    with pytest.raises(ConfigError) as err:
        load_config(top)
    message = str(err.value)
    assert str(top) in message and "datasets.x._base_" in message and "nope/b.yaml" in message
    assert "does not exist" in message


@pytest.mark.parametrize("content,kind", [("- a\n- b\n", "ListConfig"), ("5\n", "int")])
def test_a_base_that_is_not_a_mapping(tmp_path, content, kind):
    write(tmp_path / "bad.yaml", content)
    top = write(tmp_path / "top.yaml", {"model": {"_base_": "bad.yaml"}, "datasets": {}, "run": RUN})
    with pytest.raises(ConfigError, match="must be a mapping") as err:
        load_config(top)
    assert str(tmp_path / "bad.yaml") in str(err.value) and "model._base_" in str(err.value)


@pytest.mark.parametrize("value", [3, [], ["ok.yaml", 4], ""])
def test_a_base_key_that_is_no_path(tmp_path, value):
    write(tmp_path / "ok.yaml", {"a": 1})
    top = write(tmp_path / "top.yaml", {"model": {"_base_": value}, "datasets": {}, "run": RUN})
    with pytest.raises(ConfigError, match=r"model\._base_ must be a file path or a list of file paths"):
        load_config(top)


def test_a_cycle_names_the_files(tmp_path):
    write(tmp_path / "a.yaml", {"_base_": "b.yaml", "model": {}})
    write(tmp_path / "b.yaml", {"datasets": {"x": {"_base_": "a.yaml"}}})
    with pytest.raises(ConfigError, match="cycle") as err:
        load_config(tmp_path / "a.yaml")
    message = str(err.value)
    assert message.count(str(tmp_path / "a.yaml")) >= 2 and str(tmp_path / "b.yaml") in message


def test_a_file_that_is_its_own_base(tmp_path):
    top = write(tmp_path / "self.yaml", {"_base_": "self.yaml", "model": {}, "datasets": {}, "run": RUN})
    with pytest.raises(ConfigError, match="cycle"):
        load_config(top)


def test_a_bad_yaml_base_names_both_files(tmp_path):
    write(tmp_path / "broken.yaml", "a: [1, 2\n")
    top = write(tmp_path / "top.yaml", {"model": {"_base_": "broken.yaml"}, "datasets": {}, "run": RUN})
    with pytest.raises(ConfigError, match="not valid YAML") as err:
        load_config(top)
    assert str(top) in str(err.value) and str(tmp_path / "broken.yaml") in str(err.value)


def test_sections_are_checked_after_composing(tmp_path):
    write(tmp_path / "base.yaml", {"model": {}, "datasets": {}, "run": RUN, "extra": 1})
    with pytest.raises(ConfigError, match=r"unknown top-level section\(s\) \['extra'\]"):
        load_config(write(tmp_path / "top.yaml", {"_base_": "base.yaml"}))
    write(tmp_path / "half.yaml", {"model": {}})
    with pytest.raises(ConfigError, match=r"missing section\(s\) \['datasets', 'run'\]"):
        load_config(write(tmp_path / "top2.yaml", {"_base_": "half.yaml"}))


def test_a_file_without_bases_reads_as_omegaconf_load(tmp_path):
    top = write(tmp_path / "top.yaml", "model: {a: 1.0e-3, b: '${run.task}'}\ndatasets: {}\nrun: {task: t}\n")
    assert load_yaml(top) == OmegaConf.load(top)


# ---------------------------------------------------------------- the shipped configs
EASYVQA = {  # the data keys every easy-VQA config held before they were written once (configs/benchmarks/)
    "prepare": "easy_vqa",
    "root": "data/easy_vqa",
    "image_pattern": "{image_id}.png",
    "splits": {
        "train": {
            "questions": "data/easy_vqa/train_questions.json",
            "annotations": "data/easy_vqa/train_annotations.json",
            "image_root": "data/easy_vqa/images/train",
        },
        "test": {
            "questions": "data/easy_vqa/test_questions.json",
            "annotations": "data/easy_vqa/test_annotations.json",
            "image_root": "data/easy_vqa/images/test",
        },
    },
}
EASYVQA_VAL = {
    "questions": "data/easy_vqa/val_questions.json",
    "annotations": "data/easy_vqa/val_annotations.json",
    "image_root": "data/easy_vqa/images/train",
}
VQA = {  # config -> (dataset key, its own keys, has val)
    "configs/vqa/easyvqa_meter_smollm2.yaml": (
        "mmllm_vqa",
        {"num_answers": 3129, "max_text_len": 24, "soft_score": "meter"},
        True,
    ),
    "configs/lavis/vqa_easyvqa.yaml": ("mmllm_vqa", {"num_answers": 3129, "max_text_len": 24}, True),
    "configs/lavis/finetune_vqa_from_pretrain.yaml": ("mmllm_vqa", {"num_answers": 3129, "max_text_len": 24}, True),
    "configs/vqa/easyvqa_llava_smollm2.yaml": (
        "mmllm_vqa",  # every model of the VQA benchmark reads its one section
        {"max_answer_tokens": 6, "eval_limit": 500},
        False,
    ),
    "configs/vqa/easyvqa_vlap_smollm2.yaml": ("mmllm_vqa", {"max_answer_tokens": 6, "eval_limit": 1000}, False),
}
EMOJI = {
    split: {"annotation": f"data/emoji/{split}.json", "image_root": "data/emoji/images"}
    for split in ("train", "val", "test")
}
RETRIEVAL = {  # config -> (dataset key, its own keys, splits)
    "configs/retrieval/emoji_meter_smollm2.yaml": ("mmllm_retrieval", {"max_text_len": 32}, ("train", "val", "test")),
    "configs/retrieval/emoji_vlap_smollm2.yaml": ("mmllm_retrieval", {}, ("train", "val", "test")),  # one section
    "configs/lavis/retrieval_emoji.yaml": ("mmllm_retrieval", {"max_text_len": 32}, ("train", "test")),
}


def written_section(config: str, key: str) -> dict:
    """``datasets.<key>`` as written in the file itself (empty where a top-level base brings it)."""
    raw = yaml.safe_load((ROOT / config).read_text())
    return (raw.get("datasets") or {}).get(key) or {}


@pytest.mark.parametrize("config", sorted(VQA))
def test_every_easyvqa_config_composes_the_same_data(config):
    key, own, has_val = VQA[config]
    expected = {**EASYVQA, **own}
    if has_val:
        expected["splits"] = {**EASYVQA["splits"], "val": EASYVQA_VAL}
    assert plain(load_config(ROOT / config).datasets) == {key: expected}
    assert "splits" not in written_section(config, key), "the data are included, not copied"


@pytest.mark.parametrize("config", sorted(RETRIEVAL))
def test_every_emoji_config_composes_the_same_data(config):
    key, own, splits = RETRIEVAL[config]
    expected = {"prepare": "twemoji", "root": "data/emoji", "splits": {s: EMOJI[s] for s in splits}, **own}
    assert plain(load_config(ROOT / config).datasets) == {key: expected}
    assert "splits" not in written_section(config, key), "the data are included, not copied"


def test_the_meter_model_section_is_shared():
    """The METER VQA, retrieval and pretraining configs compose the same backbone (configs/models/meter_smollm2.yaml)."""
    shared = {
        "vision": {"vit": {"image_size": 64, "patch_size": 16, "width": 192, "layers": 4, "heads": 3}},
        "text": {"name": "minilm-l6"},
        "hidden_size": 256,
        "fusion_layers": 2,
        "num_heads": 4,
        "dropout": 0.1,
        "llm_block_on": "vision",
        "llm_block_at": "after_fusion",
        "llm_block": {
            "kind": "llm_block",
            "source": "smollm2-135m",
            "layers": "last",
            "dtype": "auto",
            "final_norm": "unit",
        },
    }
    assert plain(load_config(ROOT / "configs/vqa/easyvqa_meter_smollm2.yaml").model) == {**shared, "arch": "meter_vqa"}
    assert plain(load_config(ROOT / "configs/vqa/easyvqa_pretrain_itm_mlm.yaml").model) == shared
    assert plain(load_config(ROOT / "configs/retrieval/emoji_meter_smollm2.yaml").model) == {
        **shared,
        "embed_dim": 256,
        "temperature": 0.07,
    }


def test_an_edit_of_the_benchmark_file_reaches_every_config(tmp_path):
    """One edit of configs/benchmarks/easyvqa.yaml changes the three VQA tasks' data (a copy of configs/)."""
    shutil.copytree(ROOT / "configs", tmp_path / "configs", ignore=shutil.ignore_patterns("sweeps", "deepspeed"))
    bench = tmp_path / "configs/benchmarks/easyvqa.yaml"
    bench.write_text(
        bench.read_text()
        .replace("data/easy_vqa/test_questions.json", "elsewhere/test_q.json")
        .replace("root: data/easy_vqa", "root: /data/vqa")
    )
    for config, (key, _, _) in VQA.items():
        section = load_config(tmp_path / config).datasets[key]
        assert section.root == "/data/vqa" and section.splits.test.questions == "elsewhere/test_q.json", config
        assert section.splits.train.questions == "data/easy_vqa/train_questions.json"


def test_lavis_reads_the_composed_config(tmp_path):
    """LAVIS's Config reads --cfg-path with a bare OmegaConf.load: it is handed the composed file."""
    from mmllm.lavis.train import _lavis_config

    class Config:  # stands for lavis.common.config.Config, which does the same first read
        def __init__(self, args):
            self.config = OmegaConf.load(args.cfg_path)

    config = str(ROOT / "configs/lavis/finetune_vqa_from_pretrain.yaml")
    args = Namespace(cfg_path=config, options=[])
    seen = _lavis_config(Config, args).config
    assert seen == load_config(config) and "_base_" not in str(OmegaConf.to_container(seen))
    assert args.cfg_path == config  # given back
    plain_file = write(tmp_path / "plain.yaml", {"model": {}, "datasets": {}, "run": RUN})
    assert _lavis_config(Config, Namespace(cfg_path=str(plain_file), options=[])).config == OmegaConf.load(plain_file)


def test_lavis_default_sections_are_composed():
    """The LAVIS default file of a task's model (from its registered config) holds the composed section."""
    from mmllm.engine.registry import get_task
    from mmllm.lavis.adapters import _default_section

    entry = get_task("mmllm_vqa")
    written = yaml.safe_load(_default_section(entry, "model", "test_compose_vqa_model.yaml", {}).read_text())
    assert written == {"model": plain(load_config(entry.default_config).model)}
    assert written["model"]["vision"]["vit"]["image_size"] == 64
