"""The ``run`` section of a task config, declared once: types, defaults and what each key does.

Tasks with run options of their own subclass :class:`RunConfig` (e.g. retrieval's ``k_test``).
LAVIS's own run keys are declared too, so one file drives both LAVIS's runner and ours.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, NonNegativeInt, PositiveInt, field_validator, model_validator

from ..schema import Section


class RunConfig(Section):
    task: str = Field(description="registered task name (`mmllm tasks` lists them)")
    output_dir: str = Field(description="folder of this run: checkpoints, metrics.jsonl, summary.json")
    seed: int = 42
    # --- optimisation
    init_lr: float = Field(1e-4, gt=0, description="peak learning rate")
    min_lr: float | None = Field(None, ge=0, description="absolute LR floor (LAVIS); overrides min_lr_ratio")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="LR floor as a fraction of each group's peak")
    warmup_lr: float | None = Field(None, ge=0, description="LR at the first warm-up step (LAVIS); default 0")
    lr_sched: str = Field("cosine", description="cosine | linear | constant (LAVIS names accepted)")
    warmup_steps: int | None = Field(None, ge=0, description="warm-up steps; default warmup_ratio of the total")
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = Field(1.0, ge=0, description="gradient-norm clipping (0 = off)")
    lr_multipliers: dict[str, float] = Field(default_factory=dict, description="parameter-name prefix -> LR factor")
    layer_decay: float | None = Field(
        None,
        gt=0,
        le=1,
        description="layer-wise LR decay (VideoMAE fine-tuning: 0.75 / 0.7): layer i of L gets decay^(L+1-i), "
        "times run.lr_multipliers; needs a model naming its layers (the action model); unset: off",
    )
    # --- batches and length
    batch_size_train: PositiveInt = 32
    batch_size_eval: PositiveInt = 64
    accum_grad_iters: PositiveInt = 1
    max_epoch: PositiveInt = 1
    max_steps: PositiveInt | None = Field(None, description="stop after this many optimizer steps")
    num_workers: NonNegativeInt | Literal["auto"] = Field(
        "auto", description="loader workers; auto: 0 on CPU (the step uses every core), up to 8 on a GPU"
    )
    pin_memory: bool | None = Field(None, description="pinned host memory for batches; unset: on a GPU only")
    persistent_workers: bool | None = Field(
        None, description="keep loader workers across epochs; unset: whenever there are workers"
    )
    # --- engine
    deepspeed_config: str = Field("configs/deepspeed/zero0.json", description="DeepSpeed JSON (ZeRO stage)")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto: bf16 on a GPU that has it; on CPU whichever a cached micro-benchmark finds faster"
    )
    # --- checkpoints, resume, logging
    checkpoint_every: int = Field(0, ge=0, description="steps between checkpoints (0 = each epoch)")
    keep_checkpoints: PositiveInt = 2
    checkpoint_frozen: bool = Field(False, description="also store the frozen LLM weights in checkpoints")
    resume: Literal["auto", "always", "never"] = Field(
        "auto",
        description="auto: resume an existing run only if its stored config matches; always: resume it anyway; "
        "never: refuse to touch an existing run (see overwrite)",
    )
    overwrite: bool = Field(False, description="delete an existing run in output_dir and start anew")
    evaluate_val: bool = Field(True, description="evaluate the validation split(s) after each epoch")
    max_eval_samples: PositiveInt | None = Field(
        None, description="evaluate only the first N samples of each evaluation split (smoke runs; in summary.json)"
    )
    tensorboard: bool = Field(True, description="also write the curves as TensorBoard events (when installed)")
    log_every: PositiveInt = 10
    # --- stage transfer
    init_from: str | None = Field(None, description="a model_final.pt to initialise from")
    init_prefixes: list[str] = Field(default_factory=list, description="with init_from: only these submodules")
    # --- LAVIS's run keys: LAVIS's runner_base reads them, and so does our trainer (runner_deepspeed,
    # mmllm train), or it refuses them with a ConfigError; none is ignored
    runner: str | None = None
    amp: bool | None = Field(
        None, description="true: bf16 mixed precision (LAVIS: fp16 autocast); false: fp32; unset: run.precision decides"
    )
    evaluate: bool = Field(False, description="evaluate test_splits only, no training (weights: resume_ckpt_path)")
    train_splits: list[str] = Field(default_factory=lambda: ["train"], description="splits trained on (concatenated)")
    valid_splits: list[str] | None = Field(None, description="splits evaluated after each epoch; unset: val if built")
    test_splits: list[str] | None = Field(None, description="splits evaluated at the end; unset: test if built")
    resume_ckpt_path: str | None = Field(
        None,
        description="training: a checkpoint of this run (output_dir/checkpoints[/stepN]) to resume from; "
        "evaluate: a model_final.pt to evaluate",
    )
    device: str | None = None
    world_size: int | None = None
    dist_url: str | None = None
    distributed: bool | None = None
    # set by LAVIS's init_distributed_mode on its copy of the run section
    rank: int | None = None
    gpu: int | None = None
    dist_backend: str | None = None

    @field_validator("resume", mode="before")
    @classmethod
    def _legacy_resume(cls, value):
        """``resume: true/false`` of older configs: true = auto, false = never."""
        if isinstance(value, bool):
            return "auto" if value else "never"
        return value

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        from .schedule import SCHEDULES

        if self.lr_sched not in SCHEDULES:
            raise ValueError(f"lr_sched must be one of {sorted(SCHEDULES)}, got {self.lr_sched!r}")
        if self.init_prefixes and not self.init_from:
            raise ValueError("init_prefixes needs init_from")
        return self

    # keys whose change does not make a stored run a different run (resume checks ignore them)
    HARMLESS: ClassVar[frozenset[str]] = frozenset(
        {
            "num_workers",
            "pin_memory",
            "persistent_workers",
            "log_every",
            "batch_size_eval",
            "evaluate_val",
            "resume",
            "overwrite",
            "keep_checkpoints",
            "runner",
            "device",
            "world_size",
            "dist_url",
            "distributed",
            "rank",
            "gpu",
            "dist_backend",
            "output_dir",
            "max_eval_samples",
            "tensorboard",
            "valid_splits",
            "test_splits",
            "resume_ckpt_path",
            "evaluate",
        }
    )
