"""The VQA benchmark and its three models: one data section, one evaluator, the pair chosen by run.task x model.arch,
runs stored under the sections' older names still resolving as they did."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT
from omegaconf import OmegaConf
from tiny_vqa import write_images_and_qa

from mmllm.config import load_config
from mmllm.engine.evaluation import PredictionSet
from mmllm.engine.registry import all_benchmarks, all_tasks, build_task, pair_for
from mmllm.engine.rundir import config_differences
from mmllm.errors import ConfigError, DataError

CONFIGS = {
    "mmllm_vqa": "configs/vqa/easyvqa_meter_smollm2.yaml",
    "mmllm_vqa_generative": "configs/vqa/easyvqa_llava_smollm2.yaml",
    "mmllm_vqa_vlap": "configs/vqa/easyvqa_vlap_smollm2.yaml",
}


def test_three_models_share_the_vqa_benchmark_and_its_data_section():
    assert "mmllm_vqa" in all_benchmarks()
    pairs = {n: e for n, e in all_tasks().items() if e.benchmark_name == "mmllm_vqa"}
    assert {"mmllm_vqa", "mmllm_vqa_generative", "mmllm_vqa_vlap"} <= set(pairs)
    assert {pairs[n].model_name for n in CONFIGS} == {"meter_vqa", "llava_vqa", "vlap_vqa"}
    assert {(e.dataset, e.metric, e.higher_is_better) for e in pairs.values()} == {("mmllm_vqa", "accuracy", True)}
    for name, path in CONFIGS.items():
        cfg = load_config(ROOT / path)
        assert list(cfg.datasets) == ["mmllm_vqa"]  # the data written once, under the benchmark's key
        assert cfg.datasets.mmllm_vqa.prepare == "easy_vqa"  # from configs/benchmarks/easyvqa.yaml
        assert build_task(cfg).name == name


def test_run_task_names_the_benchmark_and_model_arch_the_model():
    meter = all_tasks()["mmllm_vqa"]
    assert pair_for(meter, "llava_vqa").name == "mmllm_vqa_generative"
    assert pair_for(meter, "mmllm_vlap_vqa").name == "mmllm_vqa_vlap"  # LAVIS's name of the model works too
    assert pair_for(meter, None) is meter
    with pytest.raises(ConfigError, match="'mmllm_vit_cls' is not a model of benchmark 'mmllm_vqa'"):
        pair_for(meter, "mmllm_vit_cls")
    cfg = load_config(ROOT / CONFIGS["mmllm_vqa_generative"], ["run.task=mmllm_vqa"])
    task = build_task(cfg)
    assert task.name == "mmllm_vqa_generative" and cfg.run.task == "mmllm_vqa_generative"  # recorded as the pair


def test_a_run_stored_under_an_older_section_name_resolves_as_the_same_run():
    """Runs of the generative models stored `datasets.mmllm_vqa_generative` / `mmllm_vqa_vlap`: read the same."""
    for name in ("mmllm_vqa_generative", "mmllm_vqa_vlap"):
        cfg = load_config(ROOT / CONFIGS[name])
        stored = OmegaConf.to_container(cfg)
        stored["datasets"] = {name: stored["datasets"]["mmllm_vqa"]}
        entry = all_tasks()[name]
        assert (
            config_differences(
                entry.build(OmegaConf.create(stored)).resolved_config(), entry.build(cfg).resolved_config()
            )
            == []
        )
        both = OmegaConf.to_container(cfg)
        both["datasets"][name] = {"eval_limit": 3}  # an override under the old name would go nowhere: refused
        with pytest.raises(ConfigError, match=f"datasets.{name} is the older name of datasets.mmllm_vqa"):
            entry.build(OmegaConf.create(both))


def _bench(tmp_path, **data):
    folder = write_images_and_qa(tmp_path / "d", n_images=4)
    split = {
        "questions": str(folder / "questions.json"),
        "annotations": str(folder / "annotations.json"),
        "image_root": str(folder / "images"),
    }
    cfg = load_config(ROOT / CONFIGS["mmllm_vqa"], [f"run.output_dir={tmp_path / 'run'}"])
    cfg.datasets.mmllm_vqa = {"image_pattern": "{image_id}.png", "splits": {"train": split, "test": split}, **data}
    return build_task(cfg).bench, folder


def test_the_benchmark_scores_predictions_with_the_official_rules(tmp_path):
    bench, folder = _bench(tmp_path)
    split = bench.split("test")
    questions = json.loads((folder / "questions.json").read_text())["questions"]
    truth = {
        a["question_id"]: a["answers"][0]["answer"]
        for a in json.loads((folder / "annotations.json").read_text())["annotations"]
    }
    # half right: 10 identical annotators, so a right answer scores 100 and a wrong one 0 (hand-computed)
    answers = {q["question_id"]: truth[q["question_id"]] if i % 2 == 0 else "purple" for i, q in enumerate(questions)}

    class Items:
        def __init__(self, s):
            self.split = s

    out = tmp_path / "out"
    out.mkdir()
    metrics = bench.score(
        PredictionSet([q["question_id"] for q in questions], answers.items()), Items(split), "test", out
    )
    right = sum(1 for i in range(len(questions)) if i % 2 == 0)
    assert metrics["accuracy"] == round(100 * right / len(questions), 2) and metrics["questions"] == len(questions)
    written = json.loads((out / "results_test.json").read_text())
    assert {r["question_id"]: r["answer"] for r in written} == answers
    assert json.loads((out / "accuracy_test.json").read_text())["overall"] == metrics["accuracy"]
    with pytest.raises(DataError, match="have no prediction"):
        PredictionSet([q["question_id"] for q in questions], list(answers.items())[1:])


def test_eval_limit_draws_the_same_fixed_subset_for_every_model(tmp_path):
    bench, _ = _bench(tmp_path, eval_limit=5, eval_subset_seed=3)
    test, train = bench.split("test"), bench.split("train")
    assert len(test.questions) == 5 and len(train.questions) == 12  # the training split is never cut
    ids = [q["question_id"] for q in test.questions]
    assert ids == sorted(ids)
    again, _ = _bench(tmp_path / "again", eval_limit=5, eval_subset_seed=3)
    assert [q["question_id"] for q in again.split("test").questions] == ids
    with pytest.raises(DataError, match="has no split 'val'"):
        bench.split("val")


def test_a_model_extends_the_benchmarks_data_section_never_replaces_it():
    from mmllm.engine.benchmark import BenchmarkModel
    from mmllm.schema import DataSection
    from mmllm_vqa.benchmark import VQABenchmark, VQADataOptions

    class Extended(VQADataOptions):
        my_key: int = 1

    class Good(BenchmarkModel):  # its own answer-side key on top of the benchmark's
        benchmark = VQABenchmark
        DataOptions = Extended

    assert Good.DataOptions is Extended
    with pytest.raises(TypeError, match="must extend VQABenchmark.DataOptions"):

        class Bad(BenchmarkModel):
            benchmark = VQABenchmark
            DataOptions = DataSection
