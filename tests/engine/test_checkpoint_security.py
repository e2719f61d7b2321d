"""Issue 24: no checkpoint mmllm reads can run code. A torch file whose pickle calls a function (here
``plant_marker``, which creates a file) is planted in each place mmllm loads from: a DeepSpeed tag of a
stopped run (manifest size and SHA-256 updated, so only ``weights_only`` stands in the way), a tag named
by ``run.resume_ckpt_path``, a ``model_final.pt`` for ``run.init_from`` / ``evaluate --checkpoint`` /
``mmllm analyze``, and an LLM ``pytorch_model.bin``. Each time the marker must not exist and the error
must say a pickle was refused. Each planted file is first shown to be live: DeepSpeed's own checkpoint
engine (``weights_only=False``) runs it. Also: the SHA-256 manifest catches a same-size edit, resumes
stay bit-identical with the pickle-free RNG state (ZeRO 0/2/3), and ``keep_checkpoints`` prunes the
folders of an earlier process of the same run. Runs go through ``mmllm train`` in this process."""

import hashlib
import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import toy_task  # noqa: F401 - registers toy_tokens
from conftest import ROOT
from test_registry import toy_config

from mmllm.cli import main as mmllm
from mmllm.engine.checkpoint import MANIFEST, CheckpointStore, rng_state, set_rng_state
from mmllm.errors import CheckpointError


def plant_marker(path):
    Path(path).touch()


class Payload:
    """Unpickling this calls ``plant_marker(marker)`` (as a ``__reduce__`` calling ``os.system`` would run a shell)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return plant_marker, (self.marker,)


def plant(path: Path, marker: Path, **tensors) -> None:
    torch.save({**tensors, "module": Payload(marker)}, path)


def assert_live(path: Path, marker: Path) -> None:
    """The planted file does run its payload when unpickled as DeepSpeed does (weights_only=False)."""
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    TorchCheckpointEngine().load(str(path), map_location="cpu")
    assert marker.exists()
    marker.unlink()


def assert_refused(text: str, path: Path, marker: Path) -> None:
    assert not marker.exists(), "the planted pickle ran"
    assert re.search(
        rf"{re.escape(str(path))}: refused to unpickle: the file asks to import/run "
        r"'test_checkpoint_security\.plant_marker'.*weights_only=True",
        text,
    ), text[-3000:]


def train(config, *options):
    argv = ["train", "--config", str(config)]
    return mmllm([*argv, "--options", *options] if options else argv)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rewrite_manifest(tag: Path) -> None:
    """Record the files as they are now (what an attacker with write access to the folder can do)."""
    manifest = json.loads((tag / MANIFEST).read_text())
    manifest.setdefault("sha256", {})
    for name in manifest["files"]:
        manifest["files"][name] = (tag / name).stat().st_size
        manifest["sha256"][name] = sha256(tag / name)
    (tag / MANIFEST).write_text(json.dumps(manifest))


def stop(out: Path) -> None:
    """Make a finished run look stopped after its last checkpoint (killed before it wrote its results)."""
    (out / "summary.json").unlink()
    (out / "model_final.pt").unlink()


@pytest.fixture
def stopped_run(tmp_path, capsys):
    config = toy_config(tmp_path, max_steps=2, checkpoint_every=1)
    assert train(config) == 0
    capsys.readouterr()
    out = tmp_path / "run"
    stop(out)
    return config, out


# ------------------------------------------------------------------ DeepSpeed checkpoints
@pytest.mark.parametrize("how", ["latest", "resume_ckpt_path"])
def test_planted_pickle_in_a_deepspeed_tag_never_runs(stopped_run, tmp_path, capsys, how):
    config, out = stopped_run
    tag = out / "checkpoints" / "step2"
    marker = tmp_path / "MARKER"
    target = tag / "mp_rank_00_model_states.pt"
    plant(target, marker, weight=torch.ones(3))
    rewrite_manifest(tag)  # size and SHA-256 match: the manifest is no defence here
    assert CheckpointStore(out / "checkpoints").problem("step2") is None
    assert_live(target, marker)
    options = [f"run.resume_ckpt_path={tag}"] if how == "resume_ckpt_path" else []
    assert train(config, *options) != 0
    assert_refused(capsys.readouterr().err, target, marker)


def test_every_deepspeed_read_is_weights_only(stopped_run, monkeypatch, capsys):
    """Spy on torch.load while a real ZeRO-0 tag is resumed: every call DeepSpeed makes says weights_only=True."""
    config, out = stopped_run
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    assert train(config) == 0, capsys.readouterr().err[-3000:]
    assert calls and all(c is True for c in calls), calls


def test_same_size_edit_is_caught_by_the_sha256(stopped_run):
    _, out = stopped_run
    store = CheckpointStore(out / "checkpoints")
    target = out / "checkpoints" / "step2" / "mp_rank_00_model_states.pt"
    data = bytearray(target.read_bytes())
    middle = len(data) // 2
    data[middle] ^= 0xFF  # one byte changed, same size: the size check alone passes
    target.write_bytes(bytes(data))
    assert json.loads((target.parent / MANIFEST).read_text())["files"][target.name] == len(data)
    with pytest.warns(UserWarning, match=r"step2.*SHA-256 differs.*falling back"):
        assert store.latest_tag() == "step1"
    with pytest.raises(
        CheckpointError, match=r"step2 cannot be trusted: .*mp_rank_00_model_states\.pt: SHA-256 differs"
    ):
        store.load(None, "step2")


def test_a_file_the_save_did_not_write_is_not_trusted(stopped_run):
    _, out = stopped_run
    extra = out / "checkpoints" / "step2" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save({"x": torch.ones(1)}, extra)
    assert "was not written by the checkpoint save" in CheckpointStore(out / "checkpoints").problem("step2")


def test_manifest_records_size_and_sha256_of_every_file(stopped_run):
    _, out = stopped_run
    tag = out / "checkpoints" / "step2"
    manifest = json.loads((tag / MANIFEST).read_text())
    files = sorted(p.name for p in tag.iterdir() if p.name != MANIFEST)
    assert sorted(manifest["files"]) == sorted(manifest["sha256"]) == files
    for name in files:
        assert manifest["files"][name] == (tag / name).stat().st_size
        assert manifest["sha256"][name] == sha256(tag / name)


def test_rng_state_is_plain_data(tmp_path):
    """Saved and read back with weights_only=True and no allow-listed global, the state restores every RNG."""
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # a cached Gaussian in NumPy's state too
    state = rng_state()
    want = (random.random(), np.random.standard_normal(3), np.random.rand(), torch.rand(3))
    torch.save(state, tmp_path / "rng.pt")
    assert torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "rng.pt") == []
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (random.random(), np.random.standard_normal(3), np.random.rand(), torch.rand(3))
    assert got[0] == want[0] and np.array_equal(got[1], want[1]) and got[2] == want[2] and torch.equal(got[3], want[3])


@pytest.mark.parametrize("stage,precision", [(0, "fp32"), (2, "bf16"), (3, "fp32")])
def test_resume_is_bit_identical(tmp_path, capsys, monkeypatch, stage, precision):
    """Rewound to a mid-epoch tag (loader position, RNG) and re-run, a run ends with the same weights; every
    file of the tag (model states, ZeRO partitions) was read with weights_only=True."""
    settings = dict(
        max_steps=4,
        max_epoch=2,
        checkpoint_every=1,
        keep_checkpoints=4,
        precision=precision,
        deepspeed_config=str(ROOT / f"configs/deepspeed/zero{stage}.json"),
    )
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    straight = toy_config(tmp_path / "a", **settings)
    assert train(straight) == 0
    resumed = toy_config(tmp_path / "b", **settings)
    assert train(resumed) == 0
    out = tmp_path / "b" / "run"
    stop(out)
    read, real = [], torch.load
    monkeypatch.setattr(
        torch,
        "load",
        lambda path, *a, **kw: read.append((Path(path).name, kw.get("weights_only"))) or real(path, *a, **kw),
    )
    assert train(resumed, f"run.resume_ckpt_path={out / 'checkpoints' / 'step1'}") == 0, capsys.readouterr().err[-3000:]
    monkeypatch.undo()
    tag_files = {p.name for p in (out / "checkpoints" / "step1").glob("*.pt")}
    assert {name for name, _ in read} >= tag_files and all(w is True for _, w in read), read
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("event") == "resumed"] == [1]
    a = torch.load(tmp_path / "a" / "run" / "model_final.pt", weights_only=True)["state_dict"]
    b = torch.load(out / "model_final.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_keep_checkpoints_prunes_what_an_earlier_process_wrote(tmp_path, capsys):
    config = toy_config(tmp_path, max_steps=2, max_epoch=3, checkpoint_every=1, keep_checkpoints=2)
    assert train(config) == 0
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step*")) == ["step1", "step2"]
    stop(tmp_path / "run")
    assert train(config, "run.max_steps=5", "run.resume=always") == 0, capsys.readouterr().err[-3000:]
    # before: step1..step5 (only this process's own tags were pruned)
    assert sorted(p.name for p in checkpoints.glob("step*")) == ["step4", "step5"]
    assert (checkpoints / "latest").read_text() == "step5"


def test_pruning_leaves_later_tags_of_a_rewound_run_and_other_folders(tmp_path):
    folder = tmp_path / "checkpoints"
    for name in ("step1", "step2", "step3", "step9", "notes"):
        (folder / name).mkdir(parents=True)
    store = CheckpointStore(folder, keep_last=1)
    store.adopt("step3")
    assert store.written == {"step1", "step2", "step3"}
    (folder / "step4").mkdir()
    store.written.add("step4")
    store._prune(keep="step4")
    assert sorted(p.name for p in folder.iterdir()) == ["notes", "step4", "step9"]


# ------------------------------------------------------------------ model files and LLM weights
def test_planted_model_final_never_runs(tmp_path, capsys):
    """run.init_from, `evaluate --checkpoint` (load_trained and an evaluator's CLI), `mmllm analyze`."""
    from mmllm.engine.evaluation import load_trained
    from vision.classification.evaluate import main as evaluate_cls

    marker = tmp_path / "MARKER"
    run = tmp_path / "finished"
    run.mkdir()
    evil = run / "model_final.pt"
    plant(evil, marker, state_dict={"w": torch.ones(1)})
    assert_live(evil, marker)

    assert train(toy_config(tmp_path, init_from=str(evil))) != 0
    assert_refused(capsys.readouterr().err, evil, marker)
    assert not (tmp_path / "run" / "checkpoints").exists()

    with pytest.raises(CheckpointError) as caught:
        load_trained(evil, tmp_path / "eval")
    assert_refused(str(caught.value), evil, marker)

    assert evaluate_cls(["--checkpoint", str(evil), "--out", str(tmp_path / "eval")]) != 0
    assert_refused(capsys.readouterr().err, evil, marker)

    assert mmllm(["analyze", "--run", str(run)]) != 0
    assert_refused(capsys.readouterr().err, evil, marker)


def test_planted_model_final_for_evaluate_mode(tmp_path, capsys):
    """run.evaluate with run.resume_ckpt_path naming a model file."""
    marker = tmp_path / "MARKER"
    evil = tmp_path / "model_final.pt"
    plant(evil, marker, state_dict={"w": torch.ones(1)})
    assert train(toy_config(tmp_path, evaluate=True, resume_ckpt_path=str(evil))) != 0
    assert_refused(capsys.readouterr().err, evil, marker)


def test_planted_llm_bin_never_runs(tmp_path):
    from tiny_llms import tiny_model

    from mmllm.loading import load_layer_weights

    model = tiny_model("llama")
    model.config.save_pretrained(tmp_path)
    marker = tmp_path / "MARKER"
    evil = tmp_path / "pytorch_model.bin"
    plant(evil, marker, **model.state_dict())
    assert_live(evil, marker)
    with pytest.raises(CheckpointError) as caught:
        load_layer_weights(tmp_path, [1], with_final_norm=False)
    assert_refused(str(caught.value), evil, marker)


def test_old_manifest_without_hashes_is_loaded_as_unverified(stopped_run, capsys):
    config, out = stopped_run
    for tag in (out / "checkpoints").glob("step*"):
        manifest = json.loads((tag / MANIFEST).read_text())
        (tag / MANIFEST).write_text(json.dumps({"files": manifest["files"]}))  # as mmllm wrote it before
    with pytest.warns(UserWarning, match=r"step2: its mmllm_manifest\.json has sizes but no SHA-256.*unverified"):
        assert train(config) == 0, capsys.readouterr().err[-3000:]


def test_planted_pickle_in_a_tag_without_hashes_never_runs(stopped_run, tmp_path, capsys):
    """A tag whose manifest predates hashes is still read with weights_only=True."""
    config, out = stopped_run
    tag = out / "checkpoints" / "step2"
    marker = tmp_path / "MARKER"
    target = tag / "mp_rank_00_model_states.pt"
    plant(target, marker, weight=torch.ones(3))
    sizes = {p.name: p.stat().st_size for p in tag.iterdir() if p.name != MANIFEST}
    (tag / MANIFEST).write_text(json.dumps({"files": sizes}))
    with pytest.warns(UserWarning, match="unverified"):
        assert train(config) != 0
    assert_refused(capsys.readouterr().err, target, marker)
    shutil.rmtree(out)


def test_an_os_system_payload_is_named_in_the_refusal(tmp_path):
    """The classic payload: ``__reduce__`` returning ``(os.system, (command,))``; the error names the call."""
    import os

    from mmllm.model_file import read_model_file

    marker = tmp_path / "SYSTEM_MARKER"

    class System:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "model_final.pt"
    torch.save({"state_dict": {}, "config": System()}, path)
    with pytest.raises(
        CheckpointError,
        match=rf"refused to unpickle: the file asks to import/run "
        rf"'{os.system.__module__}\.system'",
    ) as caught:
        read_model_file(path)
    assert not marker.exists() and "truncated or corrupt" not in str(caught.value)
