"""A whole pretrained causal LM that reads visual tokens prefixed to its prompt (LLaVA-style).

LLaVA (Liu et al., *Visual Instruction Tuning*, NeurIPS 2023): visual features -> projector
(linear, or LLaVA-1.5's 2-layer MLP with GELU) -> the LLM's input-embedding space, placed
before the text prompt, answer generated as text. The LM is transformers' own model class
loaded from a local folder (an embedded asset's cached export or any HF folder / GGUF file);
nothing is re-implemented and nothing is downloaded.

API (shared by the generative VQA task and VLAP's VQA path)::

    lm, tokenizer = load_causal_lm("smollm2-135m", dtype="auto"), load_tokenizer("smollm2-135m")
    fmt = PromptFormat(tokenizer, "auto")          # chat template if the tokenizer has one, else plain
    model = VisualPrefixLM(lm, visual_dim=384, projector="mlp2", prefix_ids=fmt.prefix_ids,
                           pad_id=fmt.pad_id, eos_ids=fmt.eos_ids)
    model.freeze_lm()                              # stage 1: only the projector (+ LLaViT copies) train
    p_ids, p_mask = fmt.batch_prompts(["what color is the shape?"])          # [B, Lp] right-padded
    a_ids, a_mask = fmt.batch_answers(["red"])                                # answer + EOS
    loss = model(visual, p_ids, p_mask, a_ids, a_mask)  # visual [B, N, visual_dim]; CE on answer tokens only
    token_lists = model.generate(visual, p_ids, p_mask, max_new_tokens=8)    # greedy, stops at EOS
    texts = fmt.decode(token_lists)

Sequence layout (left-padded, so every answer ends at the last position and generation appends
to all rows at once): ``[pad] [prefix_ids] [N visual tokens] [prompt] [answer + EOS]``.
``prefix_ids`` is the text before the image (the chat template's system/user header; empty for
the plain prompt). ``visual_dim == lm hidden size`` with ``projector="none"`` takes already
projected tokens (VLAP's word-embedding-space features).

LLaViT (*Large Language Models as extended Vision Transformers*) options live here too because
they change how the LM runs: ``visual_qkv`` (separate Q/K/V projections for visual tokens, see
:mod:`mmllm.models.llavit`) and ``bidirectional_visual`` (visual tokens attend to each other in
both directions, text stays causal; a custom 4D additive mask, which transformers passes to
the attention as-is).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import CheckpointError, ConfigError
from .llavit import ModalityContext, install_visual_qkv, visual_block_mask

PROMPT_MODES = ("auto", "chat", "plain", "caption")
PROJECTORS = ("linear", "mlp2", "none")
IMAGE_MARK = "<image>"


# ---------------------------------------------------------------------- loading
def _local_source(source: str) -> tuple[Path, str | None]:
    """(folder, gguf file name or None) of an LLM source; embedded assets prepared on first use."""
    from ..loading import resolve_source

    fmt, path = resolve_source(source)
    if fmt == "hf":
        return path, None
    if fmt == "gguf":
        return path.parent, path.name
    raise CheckpointError(f"{source}: format {fmt!r} cannot be loaded as a whole causal LM (use an HF folder or GGUF)")


def load_causal_lm(source: str, dtype: str | torch.dtype = "auto", attn_implementation: str = "sdpa") -> nn.Module:
    """The whole pretrained causal LM (transformers' class for its config), from local files only.

    ``dtype`` as :func:`mmllm.precision.resolve_dtype` (``auto``: bf16 on a GPU, measured on CPU)."""
    from transformers import AutoModelForCausalLM

    from ..precision import resolve_dtype

    folder, gguf = _local_source(source)
    kwargs = {"gguf_file": gguf} if gguf else {}
    model = AutoModelForCausalLM.from_pretrained(
        str(folder),
        dtype=resolve_dtype(dtype),
        local_files_only=True,
        attn_implementation=attn_implementation,
        **kwargs,
    )
    if getattr(model, "hf_quantizer", None) is not None:  # GGUF is dequantized to plain Linear layers
        model.hf_quantizer.remove_quantization_config(model)
    return model.eval()


def load_tokenizer(source: str):
    """The LM's tokenizer: from the folder when it holds one, else built by transformers from the GGUF
    file (the embedded assets cache only the weights; their tokenizer and chat template live in the GGUF)."""
    from transformers import AutoTokenizer

    from .. import assets

    if source in assets.ASSETS:
        folder = assets.prepare(source)
        if any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
            return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        cached = assets.cache_root() / f"{source}-tokenizer"  # parsing the GGUF takes 3-13 s: done once
        if (cached / "tokenizer.json").is_file():
            return AutoTokenizer.from_pretrained(str(cached), local_files_only=True)
        cached.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cached.parent, prefix=f".{source}-tok-") as scratch:
            gguf = assets.gguf_path(source, Path(scratch))
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
            staging = Path(scratch) / "tokenizer"
            tokenizer.save_pretrained(str(staging))
            try:
                os.replace(staging, cached)  # atomic: a reader never sees half a folder
            except OSError:
                if not (cached / "tokenizer.json").is_file():  # not another process's finished copy
                    raise
        return tokenizer
    folder, gguf = _local_source(source)
    kwargs = {"gguf_file": gguf} if gguf else {}
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, **kwargs)


# ---------------------------------------------------------------------- prompts
class PromptFormat:
    """How a question becomes prompt ids and an answer becomes target ids.

    ``chat``: the tokenizer's chat template with one user turn ``"<image>\\n{question}"`` and the
    generation prompt; the text before ``<image>`` is ``prefix_ids`` (shared by every sample), the
    text after it the per-sample prompt; the answer is followed by the template's end-of-turn
    token (its EOS). ``plain``: ``"Question: {question} Answer:"`` and ``" {answer}" + EOS``.
    ``auto``: chat when the tokenizer has a template. ``caption``: LLaVA's stage-1 ``plain`` conversation
    (haotian-liu/LLaVA ``llava/train/train.py:588-607``, ``preprocess_plain``): the image tokens, then the
    caption and EOS; no header, no instruction (the "question" is ignored). No BOS is added (SmolLM2's
    template has none).
    """

    def __init__(self, tokenizer, mode: str = "auto"):
        if mode not in PROMPT_MODES:
            raise ConfigError(f"prompt {mode!r} is not one of {PROMPT_MODES}")
        self.tokenizer = tokenizer
        self.mode = ("chat" if getattr(tokenizer, "chat_template", None) else "plain") if mode == "auto" else mode
        if tokenizer.eos_token_id is None:
            raise ConfigError("the tokenizer has no EOS token: generation could never stop before the limit")
        self.eos_ids = (int(tokenizer.eos_token_id),)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
        if self.mode == "caption":
            self.prefix_text, self.prompt_template, self.answer_template = "", "", "{answer}"
        elif self.mode == "chat":
            if not getattr(tokenizer, "chat_template", None):
                raise ConfigError("prompt: chat, but the tokenizer has no chat template (use plain)")
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": IMAGE_MARK + "\n{question}"}], tokenize=False, add_generation_prompt=True
            )
            before, _, after = text.partition(IMAGE_MARK)
            self.prefix_text, self.prompt_template, self.answer_template = before, after, "{answer}"
        else:
            self.prefix_text, self.prompt_template, self.answer_template = (
                "",
                "Question: {question} Answer:",
                " {answer}",
            )
        self.prefix_ids = self._encode(self.prefix_text)

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def prompt_ids(self, question: str) -> list[int]:
        return self._encode(self.prompt_template.replace("{question}", question.strip()))

    def answer_ids(self, answer: str) -> list[int]:
        return self._encode(self.answer_template.replace("{answer}", answer.strip())) + [self.eos_ids[0]]

    def _batch(self, rows: list[list[int]], max_len: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        if max_len is not None:
            rows = [r[:max_len] for r in rows]
        width = max(1, max(len(r) for r in rows))
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        return ids, mask

    def batch_prompts(self, questions: Sequence[str], max_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded prompt ids and mask [B, Lp] (``max_len`` cuts long questions)."""
        return self._batch([self.prompt_ids(q) for q in questions], max_len)

    def batch_answers(self, answers: Sequence[str], max_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded answer ids (EOS included) and mask [B, La]."""
        return self._batch([self.answer_ids(a) for a in answers], max_len)

    def decode(self, token_lists: Sequence[Sequence[int]]) -> list[str]:
        return [self.tokenizer.decode(list(t), skip_special_tokens=True).strip() for t in token_lists]


# ---------------------------------------------------------------------- the model
def build_projector(kind: str, visual_dim: int, hidden: int) -> nn.Module:
    """LLaVA's linear projector or LLaVA-1.5's Linear -> GELU -> Linear."""
    if kind == "linear":
        return nn.Linear(visual_dim, hidden)
    if kind == "mlp2":
        return nn.Sequential(nn.Linear(visual_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
    if kind == "none":
        if visual_dim != hidden:
            raise ConfigError(f"projector: none needs visual_dim == LLM hidden size ({visual_dim} != {hidden})")
        return nn.Identity()
    raise ConfigError(f"projector {kind!r} is not one of {PROJECTORS}")


class VisualPrefixLM(nn.Module):
    """Projector + whole causal LM; visual tokens prefixed to the prompt via ``inputs_embeds``."""

    def __init__(
        self,
        lm: nn.Module,
        visual_dim: int,
        projector: str = "mlp2",
        prefix_ids: Sequence[int] = (),
        pad_id: int = 0,
        eos_ids: Sequence[int] = (),
        visual_qkv: bool = False,
        bidirectional_visual: bool = False,
    ):
        super().__init__()
        self.lm = lm
        hidden = int(lm.config.hidden_size)
        self.projector = build_projector(projector, visual_dim, hidden)
        self.register_buffer("prefix_ids", torch.tensor(list(prefix_ids), dtype=torch.long), persistent=False)
        self.pad_id = int(pad_id)
        self.eos_ids = tuple(int(e) for e in eos_ids)
        self.bidirectional_visual = bidirectional_visual
        self.context = ModalityContext()
        self.visual_qkv = visual_qkv
        if visual_qkv:
            install_visual_qkv(lm, self.context)

    # --- freezing and checkpoints
    def freeze_lm(self, train_visual_qkv: bool = True) -> None:
        """Stage 1: every LM weight frozen except the LLaViT visual Q/K/V copies (when installed)."""
        for name, p in self.lm.named_parameters():
            p.requires_grad = train_visual_qkv and ".visual." in f".{name}" and self.visual_qkv
        self.lm.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if not any(p.requires_grad for n, p in self.lm.named_parameters() if ".visual." not in f".{n}"):
            self.lm.eval()  # a frozen LM stays in eval mode (no dropout) while the rest trains
        return self

    def frozen_state_keys(self) -> list[str]:
        """Frozen LM weights are reloaded from their source, so checkpoints leave them out."""
        trainable = {n for n, p in self.lm.named_parameters(remove_duplicate=False) if p.requires_grad}
        return [f"lm.{k}" for k in self.lm.state_dict() if k not in trainable]  # tied lm_head included

    # --- layout
    def assemble(
        self,
        visual: torch.Tensor,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        answer_ids: torch.Tensor | None = None,
        answer_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Left-padded ``[prefix][visual][prompt][answer]``: inputs_embeds, attention_mask, modality_ids
        (1 = visual), position_ids and labels (-100 except answer tokens)."""
        if visual.ndim != 3:
            raise ValueError(f"visual tokens must be [B, N, D], got {tuple(visual.shape)}")
        B, N, _ = visual.shape
        if prompt_ids.shape[0] != B or (answer_ids is not None and answer_ids.shape[0] != B):
            raise ValueError("visual, prompt and answer batches differ in size")
        device = prompt_ids.device
        prefix = self.prefix_ids.to(device)
        rows, mods, labs = [], [], []
        for i in range(B):
            prompt = prompt_ids[i][prompt_mask[i].bool()]
            answer = answer_ids[i][answer_mask[i].bool()] if answer_ids is not None else prompt[:0]
            vis = torch.full((N,), self.pad_id, dtype=torch.long, device=device)
            ids = torch.cat([prefix, vis, prompt, answer])
            mod = torch.zeros_like(ids)
            mod[len(prefix) : len(prefix) + N] = 1
            lab = torch.full_like(ids, -100)
            if len(answer):
                lab[-len(answer) :] = answer
            rows.append(ids), mods.append(mod), labs.append(lab)
        T = max(len(r) for r in rows)
        ids = torch.full((B, T), self.pad_id, dtype=torch.long, device=device)
        modality = torch.zeros((B, T), dtype=torch.long, device=device)
        labels = torch.full((B, T), -100, dtype=torch.long, device=device)
        attention = torch.zeros((B, T), dtype=torch.long, device=device)
        for i, (r, m, lab) in enumerate(zip(rows, mods, labs)):
            ids[i, T - len(r) :], modality[i, T - len(r) :], labels[i, T - len(r) :] = r, m, lab
            attention[i, T - len(r) :] = 1
        embeds = self.lm.get_input_embeddings()(ids)
        projected = self.projector(visual.to(self.projector_dtype())).to(embeds.dtype)
        embeds = embeds.masked_scatter((modality == 1).unsqueeze(-1), projected.reshape(B * N, -1))
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        return {
            "inputs_embeds": embeds,
            "attention_mask": attention,
            "modality_ids": modality,
            "position_ids": positions,
            "labels": labels,
        }

    def projector_dtype(self) -> torch.dtype:
        for p in self.projector.parameters():
            return p.dtype
        return self.lm.get_input_embeddings().weight.dtype

    def _mask(self, attention: torch.Tensor, modality: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """2D padding mask (transformers adds causality) or LLaViT's 4D block mask."""
        if self.bidirectional_visual:
            return visual_block_mask(modality, attention, dtype)
        return attention

    def _run(self, inputs: dict[str, torch.Tensor], **kwargs):
        self.context.ids = inputs["modality_ids"] if self.visual_qkv else None
        try:
            return self.lm(
                inputs_embeds=inputs["inputs_embeds"],
                position_ids=inputs["position_ids"],
                attention_mask=self._mask(
                    inputs["attention_mask"], inputs["modality_ids"], inputs["inputs_embeds"].dtype
                ),
                **kwargs,
            )
        finally:
            self.context.ids = None

    # --- training
    def forward(
        self,
        visual: torch.Tensor,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        answer_ids: torch.Tensor,
        answer_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Mean next-token cross-entropy over the answer tokens (EOS included) only."""
        if not bool((answer_mask.sum(-1) > 0).all()):
            raise ValueError("every sample needs at least one answer token (the EOS at least)")
        inputs = self.assemble(visual, prompt_ids, prompt_mask, answer_ids, answer_mask)
        keep = int(answer_mask.sum(-1).max().item()) + 1  # answers end every row: logits only where needed
        logits = self._run(inputs, use_cache=False, logits_to_keep=keep).logits
        targets = inputs["labels"][:, -keep + 1 :]
        return F.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100
        )

    def logits(
        self,
        visual: torch.Tensor,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        answer_ids: torch.Tensor | None = None,
        answer_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Full logits [B, T, V] of the assembled sequence (for tests and analysis)."""
        return self._run(
            self.assemble(visual, prompt_ids, prompt_mask, answer_ids, answer_mask), use_cache=False
        ).logits

    # --- generation
    @torch.no_grad()
    def generate(
        self,
        visual: torch.Tensor,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        max_new_tokens: int = 16,
        eos_ids: Sequence[int] | None = None,
    ) -> list[list[int]]:
        """Greedy decoding with a KV cache; each row stops at its first EOS (not returned) or after
        ``max_new_tokens`` tokens. New tokens are text (modality 0) and attend to everything before."""
        from transformers import DynamicCache

        if max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        eos = torch.tensor(
            list(self.eos_ids if eos_ids is None else eos_ids), dtype=torch.long, device=prompt_ids.device
        )
        inputs = self.assemble(visual, prompt_ids, prompt_mask)
        B = prompt_ids.shape[0]
        cache = DynamicCache(config=self.lm.config)
        out = self._run(inputs, past_key_values=cache, use_cache=True, logits_to_keep=1)
        attention, positions = inputs["attention_mask"], inputs["position_ids"][:, -1:]
        done = torch.zeros(B, dtype=torch.bool, device=prompt_ids.device)
        tokens: list[list[int]] = [[] for _ in range(B)]
        embed = self.lm.get_input_embeddings()
        for step in range(max_new_tokens):
            nxt = out.logits[:, -1].argmax(-1)
            stop = torch.isin(nxt, eos) if len(eos) else torch.zeros_like(done)
            for i in torch.nonzero(~done & ~stop).flatten().tolist():
                tokens[i].append(int(nxt[i]))
            done = done | stop
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            attention = torch.cat([attention, attention.new_ones(B, 1)], dim=1)
            positions = positions + 1
            step_inputs = {
                "inputs_embeds": embed(nxt.unsqueeze(1)),
                "attention_mask": attention,
                "modality_ids": torch.zeros_like(nxt).unsqueeze(1),
                "position_ids": positions,
            }
            out = self._run_step(step_inputs, cache)
        return tokens

    def _run_step(self, inputs: dict[str, torch.Tensor], cache):
        attention = inputs["attention_mask"]
        if self.bidirectional_visual:  # one text query row: every non-padding key, as transformers' causal mask
            dtype = inputs["inputs_embeds"].dtype
            row = torch.zeros(attention.shape, dtype=dtype, device=attention.device)
            mask = row.masked_fill(attention == 0, torch.finfo(dtype).min)[:, None, None, :]
        else:
            mask = attention
        self.context.ids = inputs["modality_ids"] if self.visual_qkv else None
        try:
            return self.lm(
                inputs_embeds=inputs["inputs_embeds"],
                position_ids=inputs["position_ids"],
                attention_mask=mask,
                past_key_values=cache,
                use_cache=True,
            )
        finally:
            self.context.ids = None


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
