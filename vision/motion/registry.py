"""The motion-forecasting task's registry entry (advertised through the ``mmllm.tasks`` entry point)."""
from __future__ import annotations

from pathlib import Path

from mmllm.engine.registry import TaskEntry

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "vision" / "motion_sim.yaml"


def entries() -> list[TaskEntry]:
    """``mmllm_motion``: lower-is-better Argoverse metrics; main metric minFDE.

    minFDE because the Argoverse protocol is built on it: the scored mode is the one with the
    smallest final displacement (minADE is that mode's ADE, MR thresholds its FDE), and the
    probability-aware variant (brier-minFDE) adds to it.
    """
    return [TaskEntry(
        name="mmllm_motion",
        task="vision.motion.task:MotionForecastingTask",
        dataset="mmllm_motion",
        model_arch="mmllm_vectornet",
        metric="minFDE",
        higher_is_better=False,
        default_config=CONFIG,
        preparers={"motion_sim": "vision.motion.simulate:prepare_motion_sim"},
        variants={"block": (), "no_block": ("model.llm_block.kind=none",)},
        description="Motion forecasting (Argoverse 1 format): VectorNet-style encoder, the frozen LLM block on "
                    "polyline tokens, K=6 modes; embedded data: kinematic-bicycle scenes on generated lane graphs",
    )]
