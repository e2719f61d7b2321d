"""Is the data loader the bottleneck? Samples/s of each config's training loader alone (the trainer's
batch size, collate and ``run.num_workers``, no model) next to what a training step consumes
(``run.batch_size_train`` / the median ``sec_per_step`` of a short ``mmllm train`` run), in one run.

    python benchmarks/bench_loaders.py [CONFIG ...] [--batches 30] [--train-steps 10] [--options k=v ...]
        [--import my_task_module]

A ratio loader/step well above 1 means the loader keeps up (with ``num_workers`` > 0 it runs beside the
step, so the step rate is what a run gets); near or below 1 the step waits for data. Default configs: the
image-classification MNIST and METER easy-VQA ones (their embedded data is prepared on first use).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ["configs/vision/image_cls_mnist.yaml", "configs/vqa/easyvqa_meter_smollm2.yaml"]


def loader_rate(config: str, options: list[str], batches: int) -> dict:
    from torch.utils.data import DataLoader

    from mmllm.config import load_config
    from mmllm.engine.distributed import device, local_world_size
    from mmllm.engine.launch import prepare_embedded_data, task_for
    from mmllm.engine.loader_settings import loader_settings

    cfg = load_config(
        config, [*options, f"run.output_dir={tempfile.mkdtemp(prefix='bench_loaders_')}"]
    )  # nothing written
    task = task_for(cfg)
    prepare_embedded_data(cfg)
    task.build_preprocess()
    train = task.build_datasets()["train"]
    run = task.run
    loader = DataLoader(
        train,
        batch_size=run.batch_size_train,
        shuffle=True,
        collate_fn=task.collate,
        drop_last=True,
        **loader_settings(run, device(), local_world_size()),  # what the trainer's loader gets
    )
    it = iter(loader)
    next(it)  # worker start-up and first batch left out
    n, t = 0, time.perf_counter()
    for _ in range(batches):
        try:
            next(it)
        except StopIteration:
            it = iter(loader)
            next(it)
        n += run.batch_size_train
    sec = time.perf_counter() - t
    return {"batch": run.batch_size_train, "num_workers": loader.num_workers, "loader_samples_per_s": round(n / sec, 2)}


def step_rate(config: str, options: list[str], steps: int, imports: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "mmllm.cli",
            "train",
            *[a for i in imports for a in ("--import", i)],
            "--config",
            config,
            "--options",
            *options,
            f"run.output_dir={tmp}/run",
            f"run.max_steps={steps}",
            "run.log_every=1",
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            raise SystemExit(f"mmllm train failed for {config}:\n{done.stderr[-3000:]}")
        records = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    secs = [r["sec_per_step"] for r in records if r.get("split") == "train" and "sec_per_step" in r]
    return {"median_sec_per_step": statistics.median(secs[1:] or secs)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", default=DEFAULT)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--options", nargs="*", default=[])
    parser.add_argument("--import", dest="imports", action="append", default=[])
    parser.add_argument("--out", default=None, help="also write the rows (.json)")
    args = parser.parse_args(argv)
    from mmllm.engine.launch import import_modules

    import_modules(args.imports)
    rows = []
    for config in args.configs:
        row = {"config": config, **loader_rate(config, args.options, args.batches)}
        row.update(step_rate(config, args.options, args.train_steps, args.imports))
        row["step_samples_per_s"] = round(row["batch"] / row["median_sec_per_step"], 2)
        row["loader_over_step"] = round(row["loader_samples_per_s"] / row["step_samples_per_s"], 2)
        rows.append(row)
    print("| config | batch | workers | loader samples/s | step samples/s | loader / step |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['config']} | {r['batch']} | {r['num_workers']} | {r['loader_samples_per_s']} | "
            f"{r['step_samples_per_s']} | {r['loader_over_step']} |"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
