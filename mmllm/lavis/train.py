"""Run a LAVIS task config, as LAVIS's own ``train.py`` does, with our models registered:

    python -m mmllm.lavis.train --cfg-path configs/lavis/vqa_easyvqa.yaml [--options run.max_epoch=1 ...]
    deepspeed --num_gpus 2 --module mmllm.lavis.train --cfg-path ...   (or torchrun --nproc_per_node 2 -m ...)

(The DeepSpeed launcher spells python's ``-m`` as ``--module``; ``deepspeed -m`` is not one of its flags.)

``run.runner: runner_deepspeed`` trains through our DeepSpeed engine (ZeRO from
``run.deepspeed_config``), honouring LAVIS's run keys (see :mod:`mmllm.engine.trainer`);
``run.runner: runner_base`` through LAVIS's own runner. The final metrics are printed as JSON on
stdout (logs go to stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from pathlib import Path

from ..errors import ConfigError
from ..logs import add_log_level_flag, setup_logging
from .adapters import register_all
from .compat import import_lavis, patch_runner_for_cpu


def check_config(path: str, options, registry):
    """The config with ``options`` applied, after clear errors for the mistakes LAVIS reports as
    bare assertions or ``'NoneType' object has no attribute`` (an unknown task, say)."""
    from ..config import load_config

    raw = load_config(path, options)
    for section in ("model", "datasets", "run"):
        if section not in raw:
            raise ConfigError(f"{path}: missing section {section!r} (LAVIS task configs have model, datasets, run)")
    mapping = registry.mapping
    arch = raw.model.get("arch")
    if arch not in mapping["model_name_mapping"]:
        raise ConfigError(
            f"{path}: model.arch {arch!r} is not registered; registered: {sorted(mapping['model_name_mapping'])}"
        )
    task = raw.run.get("task")
    if task not in mapping["task_name_mapping"]:
        raise ConfigError(
            f"{path}: run.task {task!r} is not registered; registered: {sorted(mapping['task_name_mapping'])}"
        )
    for name in raw.datasets:
        if name not in mapping["builder_name_mapping"]:
            raise ConfigError(
                f"{path}: dataset {name!r} is not registered; registered: {sorted(mapping['builder_name_mapping'])}"
            )
    runner = raw.run.get("runner", "runner_base")
    if runner not in mapping["runner_name_mapping"]:
        raise ConfigError(
            f"{path}: run.runner {runner!r} is not registered; registered: {sorted(mapping['runner_name_mapping'])}"
        )
    return raw


def main(argv=None) -> int:
    """The LAVIS entry point; our own errors become one line and exit 2."""
    from ..console import run_cli

    def run():
        results = _main(argv)
        from ..engine.distributed import is_main

        if is_main():
            print(json.dumps(results or {}, indent=1, sort_keys=True), flush=True)

    return run_cli(run)


def _main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg-path", required=True)
    parser.add_argument("--options", nargs="*", default=[], help="overrides like run.max_epoch=2")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    add_log_level_flag(parser)
    args = parser.parse_args(argv)
    setup_logging(args.log_level)

    registry = import_lavis().registry
    patch_runner_for_cpu()
    register_all()
    raw = check_config(args.cfg_path, args.options, registry)
    from ..engine.registry import build_task

    build_task(raw)  # every section validated (typed) before LAVIS sees it
    from ..engine.launch import prepare_embedded_data

    prepare_embedded_data(raw)
    # LAVIS joins output_dir onto its own package folder unless it is absolute
    args.options = list(args.options) + [f"run.output_dir={Path(raw.run.output_dir).resolve()}"]
    if "device" not in raw.run:
        import torch

        args.options.append(f"run.device={'cuda' if torch.cuda.is_available() else 'cpu'}")
    Config = sys.modules["lavis.common.config"].Config
    dist_utils = sys.modules["lavis.common.dist_utils"]
    cfg = _lavis_config(Config, args)
    dist_utils.init_distributed_mode(cfg.run_cfg)
    if cfg.run_cfg.get("num_workers", "auto") == "auto":  # LAVIS's runner hands it to DataLoader as an int
        from ..engine.distributed import device, local_world_size
        from ..engine.loader_settings import auto_num_workers

        cfg.run_cfg.num_workers = auto_num_workers(device(), local_world_size())
    from ..engine.trainer import seed_everything

    seed_everything(int(cfg.run_cfg.get("seed", 42)) + dist_utils.get_rank())
    task = registry.get_task_class(cfg.run_cfg.task).setup_task(cfg=cfg)
    datasets = task.build_datasets(cfg)
    model = task.build_model(cfg)
    from ..engine.distributed import all_gather_objects

    # one job folder for all ranks: rank 0 writes checkpoint_best.pth that every rank reloads
    job_id = all_gather_objects(os.environ.get("MMLLM_JOB_ID") or uuid.uuid4().hex[:8])[0]
    runner = registry.get_runner_class(cfg.run_cfg.get("runner", "runner_base"))(
        cfg=cfg, job_id=job_id, task=task, model=model, datasets=datasets
    )
    tested = _record_evaluations(runner)
    results = runner.train()
    if isinstance(results, dict):  # runner_deepspeed returns its test metrics
        return results
    # LAVIS's RunnerBase.train() returns nothing; its last evaluate() call holds the test metrics
    return {
        f"{split}_{k}": v
        for split, metrics in (tested[-1] if tested else {}).items()
        for k, v in (metrics or {}).items()
        if k != "agg_metrics"
    }


def _lavis_config(Config, args):
    """LAVIS's ``Config`` of ``args``: LAVIS reads ``--cfg-path`` with a bare ``OmegaConf.load``, so it is
    given the file with its ``_base_`` files composed (:mod:`mmllm.config`), as ``mmllm train`` reads it;
    LAVIS applies ``args.options`` over it itself."""
    import tempfile

    from omegaconf import OmegaConf

    from ..config import load_yaml

    composed = load_yaml(args.cfg_path)
    if composed == OmegaConf.load(args.cfg_path):  # no _base_: LAVIS reads the user's file itself
        return Config(args)
    with tempfile.TemporaryDirectory(prefix="mmllm-lavis-config-") as tmp:
        path = Path(tmp) / Path(args.cfg_path).name
        path.write_text(OmegaConf.to_yaml(composed))
        given = args.cfg_path
        args.cfg_path = str(path)
        try:
            return Config(args)
        finally:
            args.cfg_path = given


def _record_evaluations(runner) -> list[dict]:
    """Wraps LAVIS's ``runner.evaluate`` to keep what it returns (split -> metrics)."""
    seen: list[dict] = []
    evaluate = getattr(runner, "evaluate", None)
    if evaluate is None:
        return seen

    def recording(*args, **kwargs):
        result = evaluate(*args, **kwargs)
        if isinstance(result, dict):
            seen.append(result)
        return result

    runner.evaluate = recording
    return seen


if __name__ == "__main__":
    sys.exit(main())
