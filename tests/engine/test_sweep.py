"""The sweep runner: expansion, named variants, every task sweepable, run-folder states, resumability, report."""

import json

import pytest
import yaml

from mmllm import leaderboard, sweep
from mmllm.config import load_config, to_dict
from mmllm.engine.registry import all_tasks
from mmllm.errors import ConfigError

SPEC = {
    "name": "t",
    "seeds": [1, 2],
    "options": ["run.max_steps=2"],
    "tasks": [{"task": "mmllm_vqa", "options": ["run.batch_size_train=4"]}],
    "llms": {"smol": "smollm2-135m", "qwen": "qwen2.5-1.5b"},
    "variants": {"none": ["model.llm_block.kind=none"], "frozen": ["model.llm_block.kind=llm_block"]},
}


def test_expansion_counts_names_and_options(tmp_path):
    runs = sweep.expand(SPEC, tmp_path)
    # per seed: none once (no LLM) + frozen per LLM (2) = 3; two seeds -> 6
    assert len(runs) == 6
    names = sorted(str(r.out_dir.relative_to(tmp_path)) for r in runs)
    assert names == sorted(f"mmllm_vqa/{v}/seed{s}" for s in (1, 2) for v in ("none", "frozen_smol", "frozen_qwen"))
    frozen = next(r for r in runs if r.llm == "qwen" and r.seed == 2)
    assert frozen.label == "frozen [qwen]"
    assert "model.llm_block.source=qwen2.5-1.5b" in frozen.options and "run.seed=2" in frozen.options
    assert frozen.options.index("run.batch_size_train=4") < frozen.options.index("model.llm_block.kind=llm_block")
    assert next(r for r in runs if r.variant == "none").label == "none"


def _options(runs, task, variant):
    return [r.options for r in runs if r.task == task and r.variant == variant]


def test_standard_variant_names_layers_and_insertion_depths(tmp_path):
    spec = {
        "seeds": [1],
        "tasks": ["mmllm_image_cls", "mmllm_vqa", "mmllm_pointcloud_cls"],
        "llms": ["smollm2-135m"],
        "variants": ["none", "random_trained", "layer_last_two", "depth_head", "depth_middle", "depth_tail"],
    }
    notes = []
    runs = sweep.expand(spec, tmp_path, notes)
    (cls_rt,) = _options(runs, "mmllm_image_cls", "random_trained")
    assert "model.llm_block.kind=random_trained" in cls_rt and "model.llm_block.source=smollm2-135m" in cls_rt
    (two,) = _options(runs, "mmllm_image_cls", "layer_last_two")
    assert "model.llm_block.layers=[-2,-1]" in two
    assert load_config(runs[0].config, two).model.llm_block.layers == [-2, -1]  # a list, not YAML's {-2: None}
    # image classification: ViT depth 6 in its config, key = "after ViT block k (0-based)":
    # head = after block 0, middle = after 6 // 2 = 3 blocks -> 2, tail = after the last -> 5
    for name, value in (("depth_head", 0), ("depth_middle", 2), ("depth_tail", 5)):
        (opts,) = _options(runs, "mmllm_image_cls", name)
        assert f"model.insert_after={value}" in opts and "model.llm_block.kind=llm_block" in opts
    # point clouds (depth 4, key = blocks before the LLM block): 1, 2, 4
    for name, value in (("depth_head", 1), ("depth_middle", 2), ("depth_tail", 4)):
        (opts,) = _options(runs, "mmllm_pointcloud_cls", name)
        assert f"model.insert_after={value}" in opts
    # METER: before / after fusion, and no middle (said, not silently dropped)
    (head,) = _options(runs, "mmllm_vqa", "depth_head")
    (tail,) = _options(runs, "mmllm_vqa", "depth_tail")
    assert "model.llm_block_at=before_fusion" in head and "model.llm_block_at=after_fusion" in tail
    assert not _options(runs, "mmllm_vqa", "depth_middle")
    assert any(n.startswith("mmllm_vqa: left out depth_middle") for n in notes)
    # a list of LLM sources gets names from the sources; `none` runs once, without an LLM
    assert {r.llm for r in runs} == {None, "smollm2-135m"}
    assert [r.llm for r in runs if r.variant == "none"] == [None, None, None]


def test_every_registered_task_is_sweepable(tmp_path):
    """Each task's config builds (validated) with the standard set or its own registered variants.
    (Tasks other tests register at run time, without a default config, are not part of the library.)"""
    tasks = sorted(name for name, entry in all_tasks().items() if entry.default_config is not None)
    assert {"mmllm_vqa", "mmllm_retrieval", "mmllm_image_cls", "mmllm_3dvqa", "mmllm_motion"} <= set(tasks)
    own = sorted({v for e in all_tasks().values() for v in e.variants})
    spec = {
        "seeds": [1],
        "tasks": tasks,
        "llms": {"smollm2": "smollm2-135m"},
        "variants": [
            "none",
            "frozen",
            "random_trained",
            "random_frozen",
            "finetuned",
            "mlp",
            "layer_middle",
            "depth_head",
            *own,
        ],
    }
    runs = sweep.expand(spec, tmp_path)
    assert {r.task for r in runs} == set(tasks)
    for run in runs:
        state, diff = sweep.run_state(run)  # builds the task from the run's config: a bad override fails here
        assert (state, diff) == ("todo", [])


def test_unknown_variant_name_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'random_frozen'"):
        sweep.expand({**SPEC, "variants": ["none", "random_frozn"]}, tmp_path)


def _fake_training(tmp_path, called, metric=50.0, fail=(), envs=None):
    """A stand-in for the training process (``sweep.start_run``) that writes what the engine would:
    config.json and summary.json; runs whose folder name is in ``fail`` exit 1 and write nothing."""
    envs = [] if envs is None else envs

    class FakePopen:
        def __init__(self, cmd, stdout=None, env=None):
            called.append(cmd)
            envs.append(env)
            config, options = cmd[cmd.index("--config") + 1], cmd[cmd.index("--options") + 1 :]
            cfg = load_config(config, options)
            out = tmp_path / cfg.run.output_dir
            self.returncode = 1 if out.parent.name in fail else 0
            if stdout is not None:
                stdout.write("training log\n")
            if self.returncode:
                return
            (out / "config.json").write_text(json.dumps(to_dict(cfg)))
            block = to_dict(cfg.model.llm_block)
            (out / "summary.json").write_text(
                json.dumps(
                    {
                        "task": "mmllm_vqa",
                        "steps": 2,
                        "seed": cfg.run.seed,
                        "llm_block": block,
                        "test_accuracy": metric + cfg.run.seed + (block["kind"] != "none"),
                        "train_seconds": 1.5,
                        "trainable_params": 2_374_656 if block["kind"] != "none" else 1000,
                        "seconds_per_step": 0.5 + 0.25 * cfg.run.seed,
                    }
                )
            )

        def poll(self):
            return self.returncode

    return FakePopen


def test_sweep_trains_skips_finished_runs_and_writes_the_report(tmp_path, monkeypatch):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**SPEC, "runs_dir": str(tmp_path / "runs")}))
    runs = sweep.expand(sweep.load_sweep(path))
    called = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sweep, "start_run", _fake_training(tmp_path, called))
    sweep.run_sweep(path)
    assert len(called) == len(runs) == 6
    labels = {json.loads((r.out_dir / "sweep.json").read_text())["variant"] for r in runs}
    assert labels == {"none", "frozen [smol]", "frozen [qwen]"}
    assert all("process_seconds" in json.loads((r.out_dir / "sweep.json").read_text()) for r in runs)
    stats = {r["variant"]: r for r in leaderboard.aggregate(leaderboard.collect(tmp_path / "runs"))}
    # none: 51, 52; frozen [qwen]: 52, 53 -> mean 52.5, paired differences 1, 1
    assert stats["frozen [qwen]"]["n"] == 2 and stats["frozen [qwen]"]["mean"] == pytest.approx(52.5)
    assert stats["frozen [qwen]"]["diff"] == pytest.approx(1.0)
    report = (tmp_path / "runs" / "RESULTS.md").read_text()
    # seeds 1, 2: s/step 0.75 and 1.00 -> 0.88 (0.875 rounded half to even); 2,374,656 parameters -> 2.37 M
    assert (
        "| frozen [qwen] | 2 | 52.50 ± 0.71 | +1.00 [1.00, 1.00] | better than no block | 2 | 2.37 M | 0.88 |" in report
    )
    assert "| none | 2 | 51.50 ± 0.71 |  |  | 2 | 1,000 | 0.88 |" in report
    assert f"mmllm sweep {path} --report" in report and "Student-t" in report
    assert (tmp_path / "runs" / "leaderboard_mean_mmllm_vqa.png").stat().st_size > 1000
    called.clear()
    sweep.run_sweep(path)  # everything finished with the same config: nothing trains again
    assert called == []


def test_run_folder_states_resume_and_different_runs(tmp_path, monkeypatch):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**SPEC, "runs_dir": str(tmp_path / "runs")}))
    monkeypatch.chdir(tmp_path)
    runs = sweep.expand(sweep.load_sweep(path))
    started, other = runs[0], runs[1]
    # an interrupted run (config.json, metrics, no summary) with the same settings: resumed, not restarted
    started.out_dir.mkdir(parents=True)
    (started.out_dir / "config.json").write_text(json.dumps(to_dict(load_config(started.config, started.options))))
    (started.out_dir / "metrics.jsonl").write_text("")
    assert sweep.run_state(started) == ("resume", [])
    # a folder holding a run of other settings (another seed): refused before anything trains
    other.out_dir.mkdir(parents=True)
    changed = load_config(other.config, [*other.options, "run.init_lr=0.5"])
    (other.out_dir / "config.json").write_text(json.dumps(to_dict(changed)))
    (other.out_dir / "summary.json").write_text("{}")
    state, diff = sweep.run_state(other)
    assert state == "different" and any(d.startswith("run.init_lr: 0.5 ->") for d in diff)
    called = []
    monkeypatch.setattr(sweep, "start_run", _fake_training(tmp_path, called))
    shipped = load_config(other.config, other.options).run.init_lr  # what the config file itself says
    with pytest.raises(ConfigError, match=rf"(?s)1 run folder.* hold a different run .*run.init_lr: 0.5 -> {shipped}"):
        sweep.run_sweep(path)
    assert called == []


def test_report_regenerates_from_summaries_without_training(tmp_path, monkeypatch):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**SPEC, "runs_dir": str(tmp_path / "runs")}))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="no finished run"):
        sweep.report(path)
    runs = sweep.expand(sweep.load_sweep(path))
    called = []
    fake = _fake_training(tmp_path, called)
    for r in runs[:3]:  # seed 1 only
        r.out_dir.mkdir(parents=True)
        fake(r.command())
    monkeypatch.setattr(sweep, "start_run", lambda *a, **k: pytest.fail("--report must not train"))
    readme = tmp_path / "README.md"
    begin, end = sweep.readme_block(path)
    readme.write_text(f"# title\n\nbefore\n{begin}\nold table, typed by hand\n{end}\nafter\n")
    text = sweep.report(path, readme=readme).read_text()
    assert "3 runs of 6" in text and "Not (yet) in this table: 3 run(s)" in text
    assert "| frozen [smol] | 1 | 52.00 | +1.00 | one paired seed: no interval | 2 |" in text
    written = readme.read_text()
    assert written.startswith("# title\n\nbefore\n") and written.endswith(f"{end}\nafter\n")
    assert "old table" not in written and sweep.readme_text(readme, path) == text.strip("\n")
    assert sweep.render(path)[0] == text  # the same text, nothing written
    readme.write_text("no markers\n")
    with pytest.raises(ConfigError, match="has no block for this sweep"):
        sweep.report(path, readme=readme)
    assert sweep.readme_text(readme, path) is None


def test_bad_sweep_files(tmp_path):
    bad = tmp_path / "b.yaml"
    bad.write_text(yaml.safe_dump({**SPEC, "sedes": [1]}))
    with pytest.raises(ConfigError, match="did you mean 'seeds'"):
        sweep.load_sweep(bad)
    with pytest.raises(ConfigError, match="repeat"):
        sweep.expand({**SPEC, "seeds": [1, 1]}, tmp_path)
    with pytest.raises(ConfigError, match="not a registered task"):
        sweep.expand({**SPEC, "tasks": ["mmllm_vqq"]}, tmp_path)
    with pytest.raises(ConfigError, match="bad override|unknown key"):
        run = sweep.expand({**SPEC, "options": ["run.max_stpes=2"]}, tmp_path)[0]
        sweep.run_state(run)


def test_parallel_jobs_failures_and_per_variant_llms(tmp_path, monkeypatch):
    spec = {
        **SPEC,
        "runs_dir": str(tmp_path / "runs"),
        "variants": {"none": None, "frozen": None, "mlp": {"llms": ["smol"]}},
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    runs = sweep.expand(sweep.load_sweep(path))
    # mlp only with the small LLM: per seed none + frozen x 2 LLMs + mlp x 1 = 4
    assert sorted({r.out_dir.parent.name for r in runs}) == ["frozen_qwen", "frozen_smol", "mlp_smol", "none"]
    assert len(runs) == 8
    monkeypatch.chdir(tmp_path)
    called, envs = [], []
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(sweep.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(sweep, "start_run", _fake_training(tmp_path, called, fail=("frozen_qwen",), envs=envs))
    with pytest.raises(ConfigError, match="frozen_qwen/seed1"):  # stops: no new run after the failure
        sweep.run_sweep(path, jobs=2)
    assert len(called) < len(runs)
    assert {e["OMP_NUM_THREADS"] for e in envs} == {"2"}  # 4 cores, 2 jobs: 2 threads each
    called.clear()
    with pytest.raises(ConfigError, match="2 run\\(s\\) failed"):  # --keep-going: the others all run
        sweep.run_sweep(path, jobs=2, keep_going=True)
    done = [r for r in runs if (r.out_dir / "summary.json").is_file()]
    assert len(done) == 6 and all(r.out_dir.parent.name != "frozen_qwen" for r in done)
    assert all((r.out_dir / "train.log").read_text() == "training log\n" for r in done)  # jobs > 1: a log per run
    assert (tmp_path / "runs" / "RESULTS.md").is_file()  # the report of what finished is written anyway
    assert json.loads((done[0].out_dir / "sweep.json").read_text())["omp_num_threads"] == "2"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's own setting is kept
    assert sweep.job_environment(2)["OMP_NUM_THREADS"] == "1"
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert "OMP_NUM_THREADS" not in sweep.job_environment(1)
    with pytest.raises(ConfigError, match="not in llms"):
        sweep.expand({**spec, "variants": {"mlp": {"llms": ["gpt"]}}})


def test_a_task_can_run_a_subset_of_the_variants(tmp_path):
    spec = {
        "seeds": [1],
        "variants": ["llava", "llavit_qkv", "vlap", "vlap_assign_only"],
        "tasks": [
            {"task": "mmllm_vqa_generative", "variants": ["llava", "llavit_qkv"]},
            {"task": "mmllm_retrieval_vlap", "variants": ["vlap", "vlap_assign_only"], "options": ["run.max_steps=40"]},
        ],
    }
    runs = sweep.expand(spec, tmp_path)
    assert sorted((r.task, r.variant) for r in runs) == [
        ("mmllm_retrieval_vlap", "vlap"),
        ("mmllm_retrieval_vlap", "vlap_assign_only"),
        ("mmllm_vqa_generative", "llava"),
        ("mmllm_vqa_generative", "llavit_qkv"),
    ]
    (qkv,) = _options(runs, "mmllm_vqa_generative", "llavit_qkv")
    assert "model.llavit.visual_qkv=true" in qkv and all(r.llm is None for r in runs)  # no model.llm_block: no LLM
    (assign_only,) = _options(runs, "mmllm_retrieval_vlap", "vlap_assign_only")
    assert "model.caption_weight=0" in assign_only and "run.max_steps=40" in assign_only
    with pytest.raises(ConfigError, match="not among the sweep's variants"):
        sweep.expand({**spec, "tasks": [{"task": "mmllm_vqa_generative", "variants": ["llavit"]}]}, tmp_path)
    with pytest.raises(ConfigError, match="mmllm_vqa_generative cannot run vlap"):
        sweep.expand({**spec, "tasks": [{"task": "mmllm_vqa_generative", "variants": ["vlap"]}]}, tmp_path)
    named = {**spec, "tasks": [{**spec["tasks"][0], "reference": "llava"}, spec["tasks"][1]]}
    assert len(sweep.expand(named, tmp_path)) == 4 and sweep.references(named) == {"mmllm_vqa_generative": "llava"}
    with pytest.raises(ConfigError, match="reference: 'vlap' is not one of the arms this task runs"):
        sweep.expand({**spec, "tasks": [{**spec["tasks"][0], "reference": "vlap"}]}, tmp_path)


def test_two_sweeps_share_runs_and_keep_their_own_reports(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text(yaml.safe_dump({**SPEC, "name": "a", "runs_dir": str(tmp_path / "runs")}))
    second.write_text(
        yaml.safe_dump(
            {
                **SPEC,
                "name": "b",
                "runs_dir": str(tmp_path / "runs"),
                "report_dir": str(tmp_path / "b_report"),
                "variants": {**SPEC["variants"], "mlp": ["model.llm_block.kind=mlp"]},
            }
        )
    )
    called = []
    monkeypatch.setattr(sweep, "start_run", _fake_training(tmp_path, called))
    sweep.run_sweep(first)
    assert len(called) == 6
    called.clear()
    sweep.run_sweep(second)  # only the mlp runs are new: 2 seeds x 2 LLMs
    assert len(called) == 4 and all("model.llm_block.kind=mlp" in c for c in called)
    ours = (tmp_path / "b_report" / "RESULTS.md").read_text()
    assert "10 runs of 10" in ours and "mlp [smol]" in ours
    theirs = (tmp_path / "runs" / "RESULTS.md").read_text()
    assert "mlp" not in theirs and "4 other run(s)" not in theirs  # the first sweep's report, written once, untouched
    assert "4 other run(s)" in sweep.render(first)[0]  # rendered again now, it says what it leaves out
