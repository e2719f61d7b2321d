"""Registry entry of 2D VQA (VQAv2 format; embedded easy-VQA)."""
from pathlib import Path

from mmllm.engine.registry import InsertionDepths, TaskEntry

ROOT = Path(__file__).resolve().parents[3]
DEFAULTS = Path(__file__).resolve().parent / "lavis_defaults"


def entries() -> list[TaskEntry]:
    return [TaskEntry(
        name="mmllm_vqa", task="mmllm_vqa.task:VQATask", dataset="mmllm_vqa", model_arch="mmllm_meter_vqa",
        metric="accuracy", default_config=ROOT / "configs/vqa/easyvqa_meter_smollm2.yaml",
        preparers={"easy_vqa": "mmllm_vqa.easy_vqa_convert:ensure_converted"},
        analysis="mmllm_vqa.analysis:analysis_inputs",
        lavis_model_config=DEFAULTS / "mmllm_meter_vqa.yaml", lavis_dataset_config=DEFAULTS / "mmllm_vqa.yaml",
        insertion_depths=InsertionDepths(fixed={"head": ("model.llm_block_at=before_fusion",), "tail": ("model.llm_block_at=after_fusion",)}),
        description="METER-style VQA with the frozen LLM block after fusion; official VQA accuracy",
    ), TaskEntry(  # LLaVA-style generative baseline and LLaViT (issue 13)
        name="mmllm_vqa_generative", task="mmllm_vqa.generative_task:GenerativeVQATask",
        dataset="mmllm_vqa_generative", model_arch="mmllm_llava_vqa", metric="accuracy",
        default_config=ROOT / "configs/vqa/easyvqa_llava_smollm2.yaml",
        variants={  # LLaViT's three modifications together and each on its own (the paper's ablation)
            "llava": (),
            "llavit": ("model.llavit.visual_qkv=true", "model.llavit.bidirectional_visual=true",
                       "model.llavit.feature_layers=[2,-1]"),
            "llavit_qkv": ("model.llavit.visual_qkv=true",),
            "llavit_bidirectional": ("model.llavit.bidirectional_visual=true",),
            "llavit_multidepth": ("model.llavit.feature_layers=[2,-1]",),
        },
        description="LLaVA-style: ViT -> projector -> whole LLM, answers generated; LLaViT switches; official VQA accuracy",
    ), TaskEntry(  # VLAP's linear layer + assignment loss as the LLaVA path's visual input (issue 13)
        name="mmllm_vqa_vlap", task="mmllm_vqa.vlap_task:VLAPVQATask", dataset="mmllm_vqa_vlap",
        model_arch="mmllm_vlap_vqa", metric="accuracy", default_config=ROOT / "configs/vqa/easyvqa_vlap_smollm2.yaml",
        variants={"vlap": (), "vlap_no_assign": ("model.vlap.assign_weight=0",)},
        description="VLAP: frozen ViT -> linear (assignment prediction + answer loss) -> whole frozen LLM; VQA accuracy",
    )]
