"""LLaVA-style generative VQA model, with LLaViT's three changes each switchable in the config.

vision encoder (the same open_clip ViT builder as the METER-style VQA) -> projector -> the whole
pretrained causal LM (:class:`mmllm.models.llava.VisualPrefixLM`), answer generated as text.
LLaViT (c), global + local features, is here: the encoder's tokens at several depths (each
through the encoder's final LayerNorm) concatenated channel-wise before the projector.

Which visual features the projector reads (``model.feature_select``):

* ``penultimate_patch`` (the default, LLaVA's): the encoder's second-to-last layer, patch tokens only.
  LLaVA takes ``hidden_states[-2]`` of CLIP's vision tower and drops the CLS token
  (haotian-liu/LLaVA ``llava/model/multimodal_encoder/clip_encoder.py:35-43``, ``mm_vision_select_layer -2``
  in ``scripts/pretrain.sh:23`` and ``scripts/finetune.sh:25``). An open_clip ViT: the output of
  ``visual.transformer.resblocks[:-1]`` without ``ln_post`` (CLIP's ``hidden_states`` carry no final norm),
  the CLS token dropped. A CNN has no blocks of one width: its penultimate layer is the last stage's
  feature map *before* the 1x1 ``conv_head`` (EfficientNet-Lite0: ``blocks[-1]``, 320 channels at stride 32,
  vs 1280 after the head), its h*w grid only, without the pooled token.
* ``final_all``: what this model read before (kept for comparison): the encoder's last output after its
  final norm (ViT: ``ln_post``) or head (CNN: ``conv_head``), the CLS / pooled token first.

With ``model.llavit.feature_layers`` the depths are the listed ones (LLaViT (c)); ``penultimate_patch`` then
drops each depth's CLS / pooled token, ``final_all`` keeps it.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from mmllm.errors import ConfigError
from mmllm.models.cnn_encoder import CNNVisionEncoder
from mmllm.models.encoders import VisionEncoder, VisionOptions, build_vision_encoder
from mmllm.models.llava import PROJECTORS, PromptFormat, VisualPrefixLM, load_causal_lm, load_tokenizer
from mmllm.schema import ModelSection, Section


class LoRAOptions(Section):
    r: int = Field(8, gt=0)
    alpha: int = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj"]


class LLMOptions(Section):
    source: str = Field("smollm2-135m", description="embedded asset name, HF folder or .gguf file (never downloaded)")
    dtype: str = Field("auto", description="auto | bf16 | fp32 (auto: bf16 on a GPU, measured on CPU)")
    prompt: Literal["auto", "chat", "plain"] = "auto"
    projector: Literal["linear", "mlp2", "none"] = "mlp2"
    train: Literal["frozen", "full", "lora"] = Field("frozen", description="stage 1: frozen; stage 2: full or lora")
    lora: LoRAOptions = LoRAOptions()
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"


class LLaViTOptions(Section):
    """Each of LLaViT's changes on its own (all off = the LLaVA baseline)."""

    visual_qkv: bool = Field(False, description="(a) separate trainable Q/K/V for visual tokens in every layer")
    bidirectional_visual: bool = Field(False, description="(b) visual tokens attend to each other both ways")
    feature_layers: list[int] | None = Field(
        None, description="(c) encoder depths concatenated channel-wise, e.g. [1, -1]"
    )


FEATURE_SELECTS = ("penultimate_patch", "final_all")


class GenerativeVQAOptions(ModelSection):
    vision: VisionOptions = VisionOptions()
    feature_select: Literal["penultimate_patch", "final_all"] = Field(
        "penultimate_patch",
        description="penultimate_patch: LLaVA's (second-to-last layer, patch tokens only); final_all: the "
        "encoder's last output with its CLS / pooled token",
    )
    train_vision: bool = Field(
        True,
        description="train the vision encoder (a random-init ViT must; the pretrained "
        "CNN of model.vision.cnn can stay frozen, as LLaVA's stage 1 keeps CLIP)",
    )
    llm: LLMOptions = LLMOptions()
    llavit: LLaViTOptions = LLaViTOptions()
    max_new_tokens: int = Field(8, gt=0)
    max_question_tokens: int = Field(48, gt=0)


class MultiDepthVision(nn.Module):
    """Encoder tokens [B, tokens, width] as ``select`` says (see the module docstring); ``layers`` (LLaViT (c))
    concatenates several depths channel-wise: a ViT's depths are its blocks; a CNN's, its stages then its
    head (``-1``). ``select`` defaults to ``final_all`` here (the class's behaviour before the option);
    the model section's default is LLaVA's ``penultimate_patch``."""

    def __init__(self, encoder: VisionEncoder, layers: list[int] | None, select: str = "final_all"):
        super().__init__()
        if select not in FEATURE_SELECTS:
            raise ConfigError(f"model.feature_select: {select!r} is not one of {FEATURE_SELECTS}")
        self.encoder = encoder
        self.cnn = isinstance(encoder, CNNVisionEncoder)
        self.select = select
        if layers is not None:
            depth = encoder.depths if self.cnn else len(encoder.visual.transformer.resblocks)
            if not layers:
                raise ConfigError("model.llavit.feature_layers: empty list (use null for the last layer only)")
            bad = [i for i in layers if not -depth <= i < depth]
            if bad:
                raise ConfigError(f"model.llavit.feature_layers: {bad} outside the encoder's {depth} layers")
            if len({i % depth for i in layers}) != len(layers):
                raise ConfigError(f"model.llavit.feature_layers: {layers} names a layer twice")
        elif select == "penultimate_patch" and not self.cnn and len(encoder.visual.transformer.resblocks) < 2:
            raise ConfigError("model.feature_select: penultimate_patch needs a ViT of at least 2 blocks")
        self.layers = layers
        if self.cnn and layers:  # a CNN's depths differ in width: its stages, then its head
            self.out_dim = sum(encoder.depth_widths(layers))
        elif self.cnn and select == "penultimate_patch":
            self.out_dim = encoder.depth_widths([-2])[0]  # the last stage, before the head
        else:
            self.out_dim = encoder.width * (len(layers) if layers else 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.layers is None and self.select == "penultimate_patch":
            return self.penultimate_patches(images)
        tokens = self._all_tokens(images)
        return tokens[:, 1:] if self.select == "penultimate_patch" else tokens

    def freeze_unused(self) -> list[str]:
        """Freeze what ``penultimate_patch`` never runs (a ViT's last block and ``ln_post``; a CNN's head), so a
        trained encoder has no parameter without a gradient (ZeRO and DDP want none); returns their names."""
        if self.layers is not None or self.select != "penultimate_patch":
            return []
        if self.cnn:
            unused = [self.encoder.net.conv_head, self.encoder.net.bn2]
        else:
            unused = [self.encoder.visual.transformer.resblocks[-1], self.encoder.visual.ln_post]
        ids = {id(p) for module in unused for p in module.parameters()}
        names = [n for n, p in self.named_parameters() if id(p) in ids]
        for module in unused:
            for p in module.parameters():
                p.requires_grad = False
        return names

    def penultimate_patches(self, images: torch.Tensor) -> torch.Tensor:
        """LLaVA's features: the second-to-last layer's patch tokens [B, patches, width], no pooled token."""
        if self.cnn:
            return self.encoder.last_stage_patches(images)
        visual = self.encoder.visual
        out = visual.forward_intermediates(
            images,
            indices=[len(visual.transformer.resblocks) - 2],
            stop_early=True,
            normalize_intermediates=False,
            intermediates_only=True,
            output_fmt="NLC",
        )
        return out["image_intermediates"][0]

    def _all_tokens(self, images: torch.Tensor) -> torch.Tensor:
        if self.layers is None:
            return self.encoder(images)
        if self.cnn:
            return self.encoder.depth_tokens(images, self.layers)
        out = self.encoder.visual.forward_intermediates(
            images,
            indices=self.layers,
            normalize_intermediates=True,
            intermediates_only=True,
            output_fmt="NLC",
            output_extra_tokens=True,
        )
        by_depth = [
            torch.cat([cls, patches], dim=1)
            for cls, patches in zip(out["image_intermediates_prefix"], out["image_intermediates"])
        ]
        depth = len(self.encoder.visual.transformer.resblocks)
        order = sorted(range(len(self.layers)), key=lambda i: self.layers[i] % depth)  # timm returns them shallow first
        ranked = {j: by_depth[rank] for rank, j in enumerate(order)}
        return torch.cat([ranked[i] for i in range(len(self.layers))], dim=-1)


class GenerativeVQAModel(nn.Module):
    def __init__(self, vision: MultiDepthVision, lm: VisualPrefixLM):
        super().__init__()
        self.vision = vision
        self.lm = lm

    def forward(self, images, prompt_ids, prompt_mask, answer_ids, answer_mask) -> torch.Tensor:
        return self.lm(self.vision(images), prompt_ids, prompt_mask, answer_ids, answer_mask)

    @torch.no_grad()
    def generate(self, images, prompt_ids, prompt_mask, max_new_tokens: int) -> list[list[int]]:
        return self.lm.generate(self.vision(images), prompt_ids, prompt_mask, max_new_tokens)


def build_prompt_format(options: GenerativeVQAOptions, tokenizer=None) -> PromptFormat:
    return PromptFormat(tokenizer if tokenizer is not None else load_tokenizer(options.llm.source), options.llm.prompt)


def create_generative_vqa_model(options: GenerativeVQAOptions, fmt: PromptFormat, lm: nn.Module | None = None):
    """Factory: encoder + projector + LM from the typed ``model`` section (``lm`` given: tests' tiny LMs)."""
    if options.llm.projector not in PROJECTORS:
        raise ConfigError(f"model.llm.projector: {options.llm.projector!r} not one of {PROJECTORS}")
    vision = MultiDepthVision(
        build_vision_encoder(options.vision), options.llavit.feature_layers, options.feature_select
    )
    vision.encoder.set_trainable(options.train_vision)  # frozen: no gradients; a CNN's batch norms stay in eval mode
    vision.freeze_unused()
    if lm is None:
        lm = load_causal_lm(options.llm.source, options.llm.dtype, options.llm.attn_implementation)
    llm = options.llm
    if llm.train == "lora":
        if options.llavit.visual_qkv:
            raise ConfigError(
                "model.llm.train: lora with model.llavit.visual_qkv is not supported (use frozen or full)"
            )
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError as exc:
            raise ConfigError("model.llm.train: lora needs peft (pip install peft==0.21.2)") from exc
        lm = get_peft_model(
            lm,
            LoraConfig(
                r=llm.lora.r,
                lora_alpha=llm.lora.alpha,
                lora_dropout=llm.lora.dropout,
                target_modules=list(llm.lora.target_modules),
            ),
        )  # freezes all but LoRA
    model = VisualPrefixLM(
        lm,
        vision.out_dim,
        llm.projector,
        fmt.prefix_ids,
        fmt.pad_id,
        fmt.eos_ids,
        visual_qkv=options.llavit.visual_qkv,
        bidirectional_visual=options.llavit.bidirectional_visual,
    )
    if llm.train == "frozen":
        model.freeze_lm()
    elif llm.train == "full":
        for p in model.lm.parameters():
            p.requires_grad = True
    return GenerativeVQAModel(vision, model)
