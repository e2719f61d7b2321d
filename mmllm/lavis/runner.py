"""``runner_deepspeed``: trains any LAVIS task config through our DeepSpeed engine
(ZeRO stage from ``run.deepspeed_config``), so ``run.runner: runner_deepspeed`` gives ZeRO,
resumable atomic checkpoints and bf16 to a LAVIS config."""
from __future__ import annotations

from ..engine.task import Task
from .adapters import native_config
from .compat import import_lavis


class _Prebuilt(Task):
    """Our task with the model and datasets LAVIS already built."""

    def __init__(self, ours: Task, model, datasets):
        super().__init__(ours.cfg)
        self.ours, self.model, self.datasets = ours, model, datasets
        self.name = ours.name

    def build_model(self):
        return self.model

    def build_datasets(self):
        return self.datasets

    def collate(self, samples):
        return self.ours.collate(samples)

    def training_loss(self, model, batch):
        return self.ours.training_loss(model, batch)

    def evaluate(self, model, dataset, split, out_dir):
        return self.ours.evaluate(model, dataset, split, out_dir)

    def lr_multipliers(self):
        return self.ours.lr_multipliers()

    @property
    def main_metric(self):
        return self.ours.main_metric


class DeepSpeedRunner:
    def __init__(self, cfg, task, model, datasets, job_id=None):
        self.cfg, self.task, self.model, self.job_id = cfg, task, model, job_id

    def train(self) -> dict:
        from ..engine.trainer import Trainer

        native = native_config(self.cfg)
        prebuilt = _Prebuilt(self.task.ours, self.model.net, self.task.splits)
        return Trainer(native, prebuilt).train()


def register_runner() -> None:
    registry = import_lavis().registry
    if "runner_deepspeed" not in registry.mapping["runner_name_mapping"]:
        registry.register_runner("runner_deepspeed")(DeepSpeedRunner)
