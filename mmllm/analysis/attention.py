"""CLS→token attention of a host encoder's last self-attention, the third map of Pang et al. (ICLR 2024, §6).

The magnitude and frequency maps of §6 are read beside the map a ViT is usually read by: the attention
of its [CLS] token over the patch tokens in the last self-attention block. Neither host here returns those weights: timm's ViT
``Attention`` runs fused SDPA, open_clip's ViT calls ``nn.MultiheadAttention`` with ``need_weights=False``.
So a forward pre-hook captures the module's own input and the weights are recomputed from the module's own
projections: softmax(q kᵀ · scale + mask), averaged over heads. Nothing in the module's forward changes.
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..errors import ConfigError


def _apply_mask(scores: torch.Tensor, mask: torch.Tensor | None, true_means_keep: bool) -> torch.Tensor:
    """``scores`` [B, H, L, S] with a boolean (keep/drop, by convention) or additive float mask broadcast in."""
    if mask is None:
        return scores
    if mask.dtype == torch.bool:
        drop = mask if not true_means_keep else ~mask
        return scores.masked_fill(drop, float("-inf"))
    return scores + mask.float()


def _causal(scores: torch.Tensor) -> torch.Tensor:
    L, S = scores.shape[-2:]
    keep = torch.ones(L, S, dtype=torch.bool, device=scores.device).tril()
    return scores.masked_fill(~keep, float("-inf"))


def _timm_weights(
    module: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
) -> torch.Tensor:
    """timm's ``Attention``: one fused ``qkv`` Linear, per-head ``q_norm``/``k_norm``, ``scale``; a boolean
    ``attn_mask`` follows SDPA (True = attend)."""
    B, N, _ = x.shape
    heads = module.num_heads
    head_dim = module.qkv.out_features // (3 * heads)
    qkv = module.qkv(x).reshape(B, N, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    q, k = module.q_norm(qkv[0]), module.k_norm(qkv[1])
    scores = (q.float() * module.scale) @ k.float().transpose(-2, -1)
    scores = _apply_mask(scores, attn_mask, true_means_keep=True)
    return _causal(scores) if is_causal else scores


def _mha_weights(
    module: nn.MultiheadAttention,
    query: torch.Tensor,
    key: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
) -> torch.Tensor:
    """``nn.MultiheadAttention`` from its packed ``in_proj`` weights; a boolean mask follows torch's MHA
    (True = masked out); ``attn_mask`` is [L, S] or [B·H, L, S]."""
    if not module._qkv_same_embed_dim or module.bias_k is not None or module.add_zero_attn:
        raise ConfigError(
            "CLS attention: nn.MultiheadAttention with separate q/k/v projections, bias_k or "
            "add_zero_attn is not supported"
        )
    unbatched = query.dim() == 2
    if unbatched:
        query, key = query.unsqueeze(1 - int(module.batch_first)), key.unsqueeze(1 - int(module.batch_first))
    if not module.batch_first:
        query, key = query.transpose(0, 1), key.transpose(0, 1)
    B, L, E = query.shape
    heads, head_dim = module.num_heads, E // module.num_heads
    w_q, w_k, _ = module.in_proj_weight.float().chunk(3)
    b_q, b_k = (None, None) if module.in_proj_bias is None else module.in_proj_bias.float().chunk(3)[:2]
    q = F.linear(query.float(), w_q, b_q).view(B, L, heads, head_dim).transpose(1, 2)
    k = F.linear(key.float(), w_k, b_k).view(B, key.shape[1], heads, head_dim).transpose(1, 2)
    scores = q @ k.transpose(-2, -1) / math.sqrt(head_dim)
    if attn_mask is not None:
        scores = _apply_mask(scores, attn_mask.view(B, heads, L, -1) if attn_mask.dim() == 3 else attn_mask, False)
    if key_padding_mask is not None:
        key_padding_mask = key_padding_mask.view(B, -1)
        scores = _apply_mask(scores, key_padding_mask[:, None, None, :], true_means_keep=False)
    return _causal(scores) if is_causal and attn_mask is None else scores


def _is_timm_attention(module: nn.Module) -> bool:
    return (
        isinstance(getattr(module, "qkv", None), nn.Linear)
        and hasattr(module, "num_heads")
        and hasattr(module, "scale")
    )


def check_supported(module: nn.Module) -> None:
    """Refuse, before any forward pass, an attention module whose weights cannot be recomputed."""
    if not (isinstance(module, nn.MultiheadAttention) or _is_timm_attention(module)):
        raise ConfigError(
            f"CLS attention: {type(module).__name__} is neither nn.MultiheadAttention nor a timm-style "
            "Attention (a qkv Linear, num_heads, scale)"
        )


def attention_weights(module: nn.Module, *args, **kwargs) -> torch.Tensor:
    """[B, L, S] attention probabilities of ``module`` called with ``args``/``kwargs`` (its own forward's
    arguments), averaged over heads, in fp32."""
    check_supported(module)
    bound = inspect.signature(module.forward).bind(*args, **kwargs).arguments
    if isinstance(module, nn.MultiheadAttention):
        scores = _mha_weights(
            module,
            bound["query"],
            bound["key"],
            bound.get("key_padding_mask"),
            bound.get("attn_mask"),
            bool(bound.get("is_causal", False)),
        )
    else:
        unknown = {k for k, v in bound.items() if k not in ("x", "attn_mask", "is_causal") and v is not None}
        if unknown:
            raise ConfigError(
                f"CLS attention: {type(module).__name__} was called with {sorted(unknown)}, "
                "which the recomputation does not know"
            )
        scores = _timm_weights(module, bound["x"], bound.get("attn_mask"), bool(bound.get("is_causal", False)))
    return scores.softmax(dim=-1).mean(dim=1)


class CLSAttentionRecorder:
    """Records, on each call of ``module``, the head-averaged attention row of token 0 (CLS) over the tokens
    from ``prefix`` on (the patches): ``rows`` [B, N − prefix] per call. Use as a context manager."""

    def __init__(self, module: nn.Module, prefix: int):
        check_supported(module)
        if prefix < 1:
            raise ConfigError("CLS attention needs a CLS token (prefix ≥ 1)")
        self.module, self.prefix = module, prefix
        self.rows: list[torch.Tensor] = []
        self._handle: RemovableHandle | None = None

    def _record(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        with torch.no_grad():
            self.rows.append(attention_weights(module, *args, **kwargs)[:, 0, self.prefix :].cpu())

    def __enter__(self) -> CLSAttentionRecorder:
        self._handle = self.module.register_forward_pre_hook(self._record, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()

    def result(self) -> torch.Tensor:
        """[B, N − prefix], all recorded calls concatenated along the batch."""
        if not self.rows:
            raise ConfigError("CLS attention: the attention module was never called by the model's forward")
        return torch.cat(self.rows)
