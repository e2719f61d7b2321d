"""LAVIS registration of the retrieval project (entry point ``mmllm.lavis``): model
``mmllm_meter_retrieval``, task ``mmllm_retrieval`` (R@K), dataset builder ``mmllm_retrieval`` (Karpathy)."""
from pathlib import Path

from mmllm.config import to_dict
from mmllm.lavis.adapters import LavisEntry

DEFAULTS = Path(__file__).resolve().parent / "lavis_defaults"


def _model(model_cfg):
    from .model import create_retrieval_model

    return create_retrieval_model(to_dict(model_cfg))[0]


def entries() -> list[LavisEntry]:
    from .task import RetrievalTask

    return [LavisEntry(RetrievalTask, "mmllm_retrieval", "mmllm_meter_retrieval", "mmllm_retrieval",
                       DEFAULTS / "mmllm_meter_retrieval.yaml", DEFAULTS / "mmllm_retrieval.yaml", _model,
                       preparers=(("twemoji", "mmllm_retrieval.emoji_convert:ensure_converted"),))]
