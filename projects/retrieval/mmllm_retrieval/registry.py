"""Registry entry of image–text retrieval (Karpathy format; embedded emoji data)."""
from pathlib import Path

from mmllm.engine.registry import InsertionDepths, TaskEntry

ROOT = Path(__file__).resolve().parents[3]
DEFAULTS = Path(__file__).resolve().parent / "lavis_defaults"


def entries() -> list[TaskEntry]:
    return [TaskEntry(
        name="mmllm_retrieval", task="mmllm_retrieval.task:RetrievalTask", dataset="mmllm_retrieval",
        model_arch="mmllm_meter_retrieval", metric="r_mean",
        default_config=ROOT / "configs/retrieval/emoji_meter_smollm2.yaml",
        preparers={"twemoji": "mmllm_retrieval.emoji_convert:ensure_converted"},
        lavis_model_config=DEFAULTS / "mmllm_meter_retrieval.yaml",
        lavis_dataset_config=DEFAULTS / "mmllm_retrieval.yaml",
        insertion_depths=InsertionDepths(fixed={"head": ("model.llm_block_at=before_fusion",), "tail": ("model.llm_block_at=after_fusion",)}),
        description="METER-style ITC + ITM retrieval with the frozen LLM block after fusion; Recall@K",
    ), TaskEntry(  # VLAP (issue 13): one linear layer into the LLM's word-embedding space
        name="mmllm_retrieval_vlap", task="mmllm_retrieval.vlap_task:VLAPRetrievalTask",
        dataset="mmllm_retrieval_vlap", model_arch="mmllm_vlap_retrieval", metric="r_mean",
        default_config=ROOT / "configs/retrieval/emoji_vlap_smollm2.yaml",
        variants={"vlap": (), "vlap_assign_only": ("model.caption_weight=0",)},
        description="VLAP: frozen ViT -> linear -> LLM word-embedding space, assignment prediction (+ captioning); Recall@K",
    )]
