"""Faults of issue #24 that span modules: a sweep's unreadable LLM source or corrupt summary, NaN padding through
every block kind, and the messages for a malformed .ply, a missing from_pretrained path and an unscored split."""

import json
import logging
import re
import struct

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf
from test_sweep import SPEC, _fake_training
from tiny_llms import save_tiny

from mmllm import sweep
from mmllm.blocks import FrozenLLMBlock, block_kinds, build_block
from mmllm.blocks.registry import block_config_class
from mmllm.errors import CheckpointError, ConfigError, DataError

VISUAL = 12


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    save_tiny("llama", folder)
    return folder


# ---------------------------------------------------------------------- sweep: LLM sources checked up front
def _no_training(*args, **kwargs):
    pytest.fail("a sweep with an unreadable LLM source must train nothing")


def test_sweep_with_an_unknown_llm_fails_before_anything_trains(tmp_path, monkeypatch, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(
        yaml.safe_dump(
            {**SPEC, "runs_dir": str(tmp_path / "runs"), "llms": {"smollm2": "smollm2-135m", "typo": "smollm9-135m"}}
        )
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sweep, "start_run", _no_training)
    with pytest.raises(
        ConfigError,
        match=r"(?s)cannot be read \(nothing was trained\).*'smollm9-135m' \(2 run\(s\)"
        r".*does not exist.*did you mean 'smollm2-135m'",
    ):
        sweep.run_sweep(path, dry_run=True)
    listing = capsys.readouterr().out
    # the dry run still lists every run, and marks those that read the bad source
    assert listing.count("[todo]") == 6 and listing.count("error: LLM source 'smollm9-135m' cannot be read") == 2
    with pytest.raises(ConfigError, match="smollm9-135m"):
        sweep.run_sweep(path)
    assert not (tmp_path / "runs").exists()


def test_sweep_checks_each_variants_own_source_and_local_paths(tmp_path, monkeypatch, llama_dir):
    """No ``llms``: the block variants read the config's source (here an override to a missing folder); a
    folder holding no checkpoint is refused too; `none` reads nothing; a real checkpoint folder is fine."""
    monkeypatch.setattr(sweep, "start_run", _no_training)
    missing, empty = tmp_path / "no" / "such" / "llm", tmp_path / "empty"
    empty.mkdir()
    spec = {
        "seeds": [1],
        "tasks": [{"task": "mmllm_vqa", "options": [f"model.llm_block.source={missing}"]}],
        "variants": {
            "none": None,
            "frozen": None,
            "mlp": None,
            "random": ["model.llm_block.kind=random_frozen", f"model.llm_block.source={empty}"],
            "ok": ["model.llm_block.kind=llm_block", f"model.llm_block.source={llama_dir}"],
        },
    }
    runs = sweep.expand(spec, tmp_path / "runs")
    problems, _ = sweep.check_llm_sources(runs)
    assert set(problems) == {str(missing), str(empty)}
    assert sorted(r.variant for r in problems[str(missing)][1]) == ["frozen", "mlp"]
    assert f"{missing} does not exist" in problems[str(missing)][0]
    assert "not a recognised checkpoint" in problems[str(empty)][0]
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**spec, "runs_dir": str(tmp_path / "runs")}))
    with pytest.raises(ConfigError, match=r"2 LLM source\(s\) of this sweep cannot be read"):
        sweep.run_sweep(path, dry_run=True)


# ---------------------------------------------------------------------- sweep: a corrupt summary is no result
def test_sweep_reruns_a_run_whose_summary_is_corrupt(tmp_path, monkeypatch):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**SPEC, "runs_dir": str(tmp_path / "runs"), "seeds": [1]}))
    monkeypatch.chdir(tmp_path)
    called = []
    monkeypatch.setattr(sweep, "start_run", _fake_training(tmp_path, called))
    sweep.run_sweep(path)
    runs = sweep.expand(sweep.load_sweep(path))
    assert len(called) == len(runs) == 3
    bad = runs[1]
    (bad.out_dir / "summary.json").write_text('{"task": "mmllm_vqa", "steps": 2, "test_accura')  # cut off
    state, why = sweep.run_state(bad)
    assert state == "broken" and "malformed JSON" in why[0] and str(bad.out_dir / "summary.json") in why[0]
    assert [sweep.run_state(r)[0] for r in runs if r is not bad] == ["done", "done"]
    text = sweep.render(path)[0]
    assert f"Broken: 1 run(s) whose summary.json is no result, left out (`mmllm sweep {path}` re-runs them)" in text
    called.clear()
    sweep.run_sweep(path)  # only the broken run trains again; its corrupt file is kept aside
    assert len(called) == 1 and f"run.output_dir={bad.out_dir}" in called[0]
    assert json.loads((bad.out_dir / "summary.json").read_text())["steps"] == 2
    assert (bad.out_dir / "summary.json.broken").read_text().endswith("test_accura")
    assert sweep.run_state(bad) == ("done", [])


def test_report_of_a_sweep_whose_summaries_are_all_broken_says_so(tmp_path, monkeypatch):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**SPEC, "runs_dir": str(tmp_path / "runs"), "seeds": [1]}))
    monkeypatch.chdir(tmp_path)
    for run in sweep.expand(sweep.load_sweep(path)):
        run.out_dir.mkdir(parents=True)
        (run.out_dir / "summary.json").write_text(json.dumps({"task": "mmllm_vqa", "steps": 0}))  # no step trained
    with pytest.raises(ConfigError, match=r"3 run\(s\) have a broken summary.json .*steps is 0.*re-run them") as err:
        sweep.report(path)
    assert "first" not in str(err.value)


# ---------------------------------------------------------------------- blocks: NaN in padding, every kind
@pytest.mark.parametrize("kind", block_kinds())
def test_every_kind_zeroes_padded_tokens_even_when_they_hold_nan(llama_dir, kind):
    fields = block_config_class(kind).model_fields
    wanted = {"source": str(llama_dir), "dtype": "float32"}
    block = build_block({"kind": kind, **{k: v for k, v in wanted.items() if k in fields}}, VISUAL)
    torch.manual_seed(0)
    x = torch.randn(3, 6, VISUAL)
    pad = torch.zeros(3, 6, dtype=torch.bool)
    pad[1, 4:] = True
    pad[2, 1:] = True
    x[pad] = float("nan")
    x[2, 3, 0] = float("inf")
    out = block(x, padding_mask=pad)
    assert out.shape == (3, 6, block.out_dim if hasattr(block, "out_dim") else VISUAL)
    assert torch.equal(out[pad], torch.zeros_like(out[pad]))  # exactly zero, not NaN
    assert torch.isfinite(out[~pad]).all()
    if kind == "none":
        assert torch.equal(out[~pad], x[~pad])
    else:  # a real token does not depend on what padding holds
        clean = torch.where(pad[..., None], torch.zeros_like(x), x)
        torch.testing.assert_close(block(clean, padding_mask=pad)[~pad], out[~pad])


# ---------------------------------------------------------------------- messages
def test_from_pretrained_on_a_missing_path_says_it_does_not_exist(tmp_path):
    missing = tmp_path / "saved_block"
    with pytest.raises(CheckpointError, match=f"{missing} does not exist") as err:
        FrozenLLMBlock.from_pretrained(missing)
    assert "visual_dim" not in str(err.value)
    with pytest.raises(CheckpointError, match="does not exist"):
        FrozenLLMBlock.from_pretrained(str(missing), visual_dim=VISUAL)
    with pytest.raises(CheckpointError, match=r"'smollm9-135m' is not an embedded asset name \(did you mean"):
        FrozenLLMBlock.from_pretrained("smollm9-135m")


def _ply(vertices: int, properties: str = "x y z", fmt: str = "ascii") -> str:
    return (
        "ply\nformat "
        + fmt
        + " 1.0\nelement vertex "
        + str(vertices)
        + "\n"
        + "".join(f"property float {p}\n" for p in properties.split())
        + "end_header\n"
    )


def _binary_ply(points: np.ndarray) -> bytes:
    header = _ply(len(points), fmt="binary_little_endian").encode()
    return header + b"".join(struct.pack("<3f", *p) for p in points)


POINTS = np.arange(12, dtype=np.float32).reshape(4, 3)
BAD_PLY = {
    "no_y": (_ply(2, "x z") + "0 1\n2 3\n", "has no 'y' vertex property (its vertex properties: x, z)"),
    "cut_ascii": (_ply(4) + "0 1 2\n3 4 5\n", "header declares 4 vertices, but 2 were read"),
    "cut_binary": (
        _binary_ply(POINTS)[:-7],
        "binary_little_endian data do not match its header, the file is truncated or corrupt",
    ),
    "bad_number": (_ply(2) + "0 1 2\n3 y 5\n", "ascii data do not match its header"),
    "garbage": ("hello, not a point cloud\n", "not a PLY file"),
    "empty": ("", "not a PLY file (it is empty)"),
    "no_end_header": ("ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\n", "without an 'end_header'"),
    "no_vertices": (
        "ply\nformat ascii 1.0\nelement face 0\nproperty list uchar int vertex_indices\nend_header\n",
        "without a 'vertex' element",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_PLY))
def test_malformed_ply_names_the_file_and_the_fault(tmp_path, name):
    from mmllm_3dvqa.data import read_point_cloud

    content, message = BAD_PLY[name]
    path = tmp_path / f"{name}.ply"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError, match=re.escape(message)) as err:
        read_point_cloud(path, use_color=False)
    assert str(path) in str(err.value)


def test_well_formed_ply_files_still_read(tmp_path):
    from mmllm_3dvqa.data import read_point_cloud

    (tmp_path / "b.ply").write_bytes(_binary_ply(POINTS))
    (tmp_path / "a.ply").write_text(_ply(4) + "".join(" ".join(map(str, p)) + "\n" for p in POINTS.tolist()))
    for name in ("a.ply", "b.ply"):
        assert np.array_equal(read_point_cloud(tmp_path / name, use_color=False), POINTS)


def test_forecasts_without_ground_truth_are_not_scored_silently(tmp_path, capsys):
    from vision.motion.evaluate import main

    path = tmp_path / "forecasts_test.npz"
    np.savez(path, forecasts=np.zeros((2, 6, 30, 2)), probabilities=np.full((2, 6), 1 / 6))
    assert main(["--forecasts", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no `{}` on stdout
    assert str(path) in captured.err and "no ground-truth futures, so nothing to score" in captured.err


def test_motion_split_without_futures_is_said_to_be_unscored(tmp_path, caplog):
    from mmllm.engine.launch import task_for
    from vision.motion.simulate import write_dataset

    data = write_dataset(tmp_path / "sim", {"train": 2, "val": 1, "test": 2}, seed=4)
    observed = data / "observed"  # Argoverse's test set: the first 20 frames of each sequence only
    observed.mkdir()
    for csv in sorted((data / "test" / "data").glob("*.csv")):
        header, *lines = csv.read_text().splitlines()
        first = sorted({line.split(",")[0] for line in lines}, key=float)[:20]
        (observed / csv.name).write_text("\n".join([header, *(x for x in lines if x.split(",")[0] in first)]) + "\n")
    cfg = OmegaConf.create(
        {
            "model": {"hidden_dim": 16, "dim": 16, "num_heads": 2, "llm_block": {"kind": "none"}},
            "datasets": {
                "mmllm_motion": {
                    "root": str(data),
                    "max_lanes": 8,
                    "lane_radius": 30.0,
                    "splits": {"train": "train/data", "test": "observed"},
                }
            },
            "run": {"task": "mmllm_motion", "output_dir": str(tmp_path / "run"), "batch_size_eval": 2},
        }
    )
    task = task_for(cfg)
    task.build_preprocess()
    datasets = task.build_datasets()
    assert not datasets["test"].has_future
    with caplog.at_level(logging.WARNING):
        metrics = task.evaluate(task.build_model(), datasets["test"], "test", tmp_path / "run")
    assert metrics == {}
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "split 'test'" in m and "not scored, no ground-truth futures" in m and str(observed) in m for m in said
    ), said
    assert (tmp_path / "run" / "forecasts_test.npz").is_file()
