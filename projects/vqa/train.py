"""Train a VQA (or VL-pretraining) model from a LAVIS-style YAML config.

    python projects/vqa/train.py --config configs/vqa/easyvqa_meter_smollm2.yaml [--options run.max_epoch=2 ...]
    deepspeed --num_gpus 2 projects/vqa/train.py --config ...      (on CPU: DS_ACCELERATOR=cpu, gloo)
"""
from __future__ import annotations

import argparse
import json

from mmllm.config import load_config
from mmllm.engine.trainer import Trainer
from mmllm.errors import ConfigError


def prepare_embedded_data(cfg) -> None:
    """Datasets marked ``prepare: easy_vqa`` are converted from the easy-vqa package on first use."""
    for name, spec in cfg.datasets.items():
        if spec.get("prepare") == "easy_vqa":
            from mmllm_vqa.easy_vqa_convert import ensure_converted

            if not spec.get("root"):
                raise ConfigError(f"datasets.{name}.prepare=easy_vqa needs datasets.{name}.root")
            ensure_converted(spec.root)
        elif spec.get("prepare"):
            raise ConfigError(f"datasets.{name}.prepare: unknown {spec.prepare!r} (known: easy_vqa)")


def build_task(cfg):
    name = cfg.run.get("task", "vqa")
    if name == "vqa":
        from mmllm_vqa.task import VQATask

        return VQATask(cfg)
    if name == "itm_mlm":
        from mmllm.tasks.pretrain import ITMMLMTask

        return ITMMLMTask(cfg)
    raise ConfigError(f"run.task must be 'vqa' or 'itm_mlm', got {name!r}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--options", nargs="*", default=[], help="overrides like run.max_epoch=2")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.options)
    prepare_embedded_data(cfg)
    results = Trainer(cfg, build_task(cfg)).train()
    print(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
