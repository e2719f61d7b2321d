"""The engine's declared contracts, over every registered task: ``build_preprocess()`` returns a typed
:class:`~mmllm.engine.preprocess.Preprocess` that the task keeps; evaluation splits follow
:class:`~mmllm.engine.splits.EvalSplit` (``ids``, ``head(n)``, ``len``); :class:`PredictionSet` is the
one "every id exactly once" check; ``mmllm evaluate --run`` re-scores a finished run as it scored itself.

The tiny data and models are those of ``test_task_contract.py`` (its ``TINY``: one entry per task).
"""

from __future__ import annotations

import json

import pytest
from test_task_contract import Data, shipped_tasks, tiny_config

from mmllm.engine.evaluation import PredictionSet
from mmllm.engine.preprocess import Preprocess
from mmllm.engine.registry import all_tasks
from mmllm.engine.splits import EvalSplit
from mmllm.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Data:
    return Data(tmp_path_factory.mktemp("contracts"))


def tiny_task(name: str, data: Data, out):
    from mmllm.config import load_config
    from mmllm.engine.cli import prepare_embedded_data

    entry = all_tasks()[name]
    cfg = load_config(tiny_config(entry, data, out))
    task = entry.build(cfg)
    prepare_embedded_data(cfg)
    return task


@pytest.mark.parametrize("name", shipped_tasks())
def test_build_preprocess_returns_the_preprocess_the_task_keeps(name, data, tmp_path):
    task = tiny_task(name, data, tmp_path / "run")
    with pytest.raises(ConfigError, match=r"preprocessing is not built; call task.build_preprocess\(\)"):
        task.preprocess  # noqa: B018 - the one call-order guard, before build_preprocess
    made = task.build_preprocess()
    assert isinstance(made, Preprocess) and task.preprocess is made
    with pytest.raises(AttributeError):  # frozen: a task's preprocessing is not patched afterwards
        made.train = None  # type: ignore[misc]
    # what mmllm.create_model_and_transforms and LAVIS's processors hand out is this very object's
    from mmllm.factory import task_transforms

    assert task_transforms(task) == (made.train, made.eval, made.tokenizer)


@pytest.mark.parametrize("name", shipped_tasks())
def test_every_evaluation_split_follows_the_protocol(name, data, tmp_path):
    task = tiny_task(name, data, tmp_path / "run")
    task.build_preprocess()
    datasets = task.build_datasets()
    evaluated = [s for s in datasets if s != "train"]
    assert evaluated, f"{name} builds no evaluation split"
    for split in evaluated:
        ds = datasets[split]
        assert isinstance(ds, EvalSplit), (name, split, type(ds).__name__)
        ids = list(ds.ids)
        assert len(ids) == len(ds) > 0 and len(set(ids)) == len(ids), (name, split)
        part = ds.head(1)
        assert type(part) is type(ds) and len(part) == 1 and list(part.ids) == ids[:1], (name, split)
        assert list(ds.head(len(ds) + 5).ids) == ids  # longer than the split: all of it
        assert list(ds.ids) == ids  # head leaves the split itself as it was


def test_retrieval_head_keeps_the_captions_of_its_images(data, tmp_path):
    task = tiny_task("mmllm_retrieval", data, tmp_path / "run")
    task.build_preprocess()
    test = task.build_datasets()["test"]
    first = test.head(1)
    assert first.texts == test.items[0].captions and first.img2txt == [list(range(len(test.items[0].captions)))]


def test_prediction_set_names_missing_duplicated_and_foreign_ids():
    ids = [10, 11, 12, 13]
    ok = PredictionSet(ids, [(12, "c"), (10, "a"), (13, "d"), (11, "b")], "eval test")
    assert list(ok) == ids and list(ok.values()) == ["a", "b", "c", "d"] and ok[12] == "c" and len(ok) == 4
    with pytest.raises(DataError, match=r"eval test: 2 of the 4 ids have no prediction, e\.g\. \[11, 13\]"):
        PredictionSet(ids, [(10, "a"), (12, "c")], "eval test")
    with pytest.raises(DataError, match=r"eval test: 1 prediction\(s\) repeat an id, e\.g\. \[12\]"):
        PredictionSet(ids, [(10, "a"), (11, "b"), (12, "c"), (12, "c"), (13, "d")], "eval test")
    with pytest.raises(
        DataError,
        match=r"eval test: 1 prediction\(s\) for id\(s\) the split does not hold, "
        r"e\.g\. \['q99'\]",
    ):
        PredictionSet(ids, [(10, "a"), (11, "b"), (12, "c"), (13, "d"), ("q99", "x")], "eval test")
    with pytest.raises(DataError, match=r"the split lists id\(s\) \[11\] more than once"):
        PredictionSet([10, 11, 11], [(10, "a"), (11, "b")], "eval test")
    many = list(range(20))
    with pytest.raises(DataError, match=r"20 of the 20 ids have no prediction, e\.g\. \[0, 1, 2, 3, 4, \.\.\.\]"):
        PredictionSet(many, [], "eval")


def test_mmllm_evaluate_rescores_a_finished_run_as_its_summary(data, tmp_path, capsys):
    from mmllm.cli import main as mmllm
    from vision.action.evaluate import from_checkpoint as action_from_checkpoint
    from vision.classification.evaluate import evaluate_checkpoint

    entry = all_tasks()["mmllm_image_cls"]
    out = tmp_path / "run"
    assert mmllm(["train", "--config", str(tiny_config(entry, data, out))]) == 0, capsys.readouterr().err[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    capsys.readouterr()
    assert mmllm(["evaluate", "--run", str(out), "--out-dir", str(tmp_path / "eval")]) == 0
    report = json.loads(capsys.readouterr().out)
    expected = {k.removeprefix("test_"): v for k, v in summary.items() if k.startswith("test_")}
    assert expected and report == expected
    assert (tmp_path / "eval" / "predictions_test.npz").is_file()
    # the task's own --checkpoint path is the same function
    assert evaluate_checkpoint(str(out / "model_final.pt"), "test", str(tmp_path / "eval2")) == expected
    # one-line errors: a split the run does not have; a run of another task given to another task's evaluator
    capsys.readouterr()
    assert mmllm(["evaluate", "--run", str(out), "--split", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "split 'nope' is not among the splits" in err
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(ConfigError, match="a checkpoint of task 'mmllm_image_cls'"):
        action_from_checkpoint(str(out / "model_final.pt"), "test", str(tmp_path / "eval3"))
    assert (
        mmllm(
            ["evaluate", "--run", str(out), "--options", "run.batch_size_eval=3", "--out-dir", str(tmp_path / "eval4")]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out) == expected  # evaluation settings do not change the numbers
