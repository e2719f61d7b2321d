"""``runner_deepspeed``: trains any LAVIS task config through our DeepSpeed engine
(ZeRO stage from ``run.deepspeed_config``), so ``run.runner: runner_deepspeed`` gives ZeRO,
resumable atomic checkpoints and bf16 to a LAVIS config. LAVIS's model and datasets are
handed to our trainer as they are: nothing is built twice. LAVIS's run keys (``train_splits``,
``valid_splits``, ``test_splits``, ``evaluate``, ``resume_ckpt_path``, ``amp``, ``warmup_lr``,
``init_lr``, ``min_lr``) are honoured by :class:`mmllm.engine.trainer.Trainer`, or refused with a
ConfigError where they cannot be (never ignored); ``train()`` returns the final test metrics."""

from __future__ import annotations

from .compat import import_lavis


class DeepSpeedRunner:
    def __init__(self, cfg, task, model, datasets, job_id=None):
        self.cfg, self.task, self.model, self.job_id = cfg, task, model, job_id

    def train(self) -> dict:
        from ..engine.trainer import Trainer

        ours = self.task.ours
        return Trainer(ours.cfg, ours, model=self.model.net, datasets=self.task.splits).train()


def register_runner() -> None:
    registry = import_lavis().registry
    if "runner_deepspeed" not in registry.mapping["runner_name_mapping"]:
        registry.register_runner("runner_deepspeed")(DeepSpeedRunner)
