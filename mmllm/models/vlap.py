"""VLAP's pieces: a linear map into a frozen LLM's word-embedding space, trained by assignment prediction.

Park, Lee & Sohn, *Bridging Vision and Language Spaces with Assignment Prediction*, ICLR 2024
(arXiv:2404.09632). Only one linear layer trains; the vision encoder and the LLM stay frozen.

* **Central space.** The LLM's word embeddings ``W`` [K, D], frozen and L2-normalised, act as
  fixed "prototypes" (SwAV's learnable prototypes replaced by words, §3 of the paper).
* **Assignment.** For a batch of B representations ``z`` (visual or text), the scores are
  ``S = norm(z) · norm(W)ᵀ`` [B, K]. The assignment ``Q`` solves the entropic optimal-transport
  problem ``max_Q Tr(Qᵀ S) + ε H(Q)`` over the transportation polytope whose word marginal is
  the *word distribution* ``μ`` (the paper's change to SwAV's uniform marginal, since words
  are far from equally frequent) and whose sample marginal is uniform ``1/B``. It is solved by
  Sinkhorn–Knopp (Cuturi 2013; SwAV, Caron et al. 2020): ``Q = diag(a) exp(S/ε) diag(b)`` with
  alternating row/column scalings; ε = 0.01 and 3 iterations as in the paper.
* **Swapped prediction.** Each modality predicts the other's assignment from its own scores with a
  temperature-scaled softmax, ``p = softmax(S / τ)`` over words, and cross-entropy
  ``L_map = -1/B Σ_b [ Σ_k q^t_bk log p^v_bk + Σ_k q^v_bk log p^t_bk ]`` (SwAV's swapped loss, the
  two terms summed). The codes ``q`` are targets (no gradient), each row scaled to sum to 1.
* **Captioning.** The projected visual tokens are prefixed to the frozen LLM and the caption is
  the target of next-token cross-entropy (:class:`mmllm.models.llava.VisualPrefixLM`, projector
  ``none``); ``L = L_map + λ_cap · L_cap``.

Sources: the paper's abstract and overview (arXiv:2404.09632 and its reviews) state the pieces — the
LLM's word embeddings as a fixed central space, optimal transport with a word-distribution-aware
transportation polytope instead of a uniform one, predicting one modality's assignment from the
other, a captioning objective, one linear layer; ε = 0.01 and 3 iterations come from the issue.
The equations written here are SwAV's (Caron et al., NeurIPS 2020: Sinkhorn codes, swapped
cross-entropy) with those substitutions; τ = 0.1 is SwAV's default, not a value read from VLAP.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError, DataError

TEXT_FEATURES = ("embeddings", "llm_hidden")


# ---------------------------------------------------------------------- the word prior
def word_frequency_prior(token_lists: Iterable[Sequence[int]], vocab_size: int, smoothing: float = 0.1,
                         ignore_ids: Sequence[int] = ()) -> torch.Tensor:
    """The target marginal over words: token counts over the training texts, add-``smoothing``
    (Lidstone) over the whole vocabulary so no word is impossible, normalised to sum 1.

    ``ignore_ids`` (padding, EOS) are never counted and get the smoothing mass only."""
    if vocab_size < 1:
        raise ConfigError(f"vocab_size must be >= 1, got {vocab_size}")
    if not math.isfinite(smoothing) or smoothing < 0:
        raise ConfigError(f"prior smoothing must be a finite number >= 0, got {smoothing}")
    counts = torch.zeros(vocab_size, dtype=torch.float64)
    ignore = set(int(i) for i in ignore_ids)
    n = 0
    for ids in token_lists:
        keep = [int(i) for i in ids if int(i) not in ignore]
        bad = [i for i in keep if not 0 <= i < vocab_size]
        if bad:
            raise DataError(f"token id {bad[0]} outside the vocabulary of {vocab_size}")
        if keep:
            counts += torch.bincount(torch.tensor(keep, dtype=torch.long), minlength=vocab_size).double()
        n += len(keep)
    if n == 0 and smoothing == 0:
        raise DataError("word prior: no tokens counted and no smoothing; the prior would be 0/0")
    prior = counts + smoothing
    return (prior / prior.sum()).float()


def fit_prior(prior: torch.Tensor, rows: int) -> torch.Tensor:
    """The prior over the tokenizer's vocabulary fitted to an embedding table with ``rows`` rows: tables
    padded beyond the tokenizer (e.g. to a multiple of 64) get zero mass on rows no text can produce."""
    if prior.shape[0] > rows:
        raise ConfigError(f"the tokenizer has {prior.shape[0]} tokens but the embedding table only {rows} rows")
    return torch.cat([prior, prior.new_zeros(rows - prior.shape[0])])


# ---------------------------------------------------------------------- optimal transport
@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, word_prior: torch.Tensor, epsilon: float = 0.01,
                   iterations: int = 3) -> torch.Tensor:
    """The entropic transport plan P [B, K] between B samples (marginal 1/B each) and K words
    (marginal ``word_prior``), ``P = diag(a) exp(scores/ε) diag(b)``.

    Log-domain scalings (ε = 0.01 turns cosines into exponents up to 100, past fp32's range).
    Each iteration scales the word columns to the prior, then the sample rows to 1/B, so the
    sample marginal is exact after any number of iterations and the word marginal converges
    (3 iterations, the paper's and SwAV's setting, leave it approximate by design). Returns the
    plan in fp32; multiply by B for per-sample assignment codes that sum to 1."""
    if scores.ndim != 2:
        raise ValueError(f"scores must be [B, K], got {tuple(scores.shape)}")
    B, K = scores.shape
    if word_prior.shape != (K,):
        raise ValueError(f"word_prior has shape {tuple(word_prior.shape)}, scores imply ({K},)")
    if epsilon <= 0 or iterations < 1:
        raise ConfigError(f"sinkhorn needs epsilon > 0 and iterations >= 1 (got {epsilon}, {iterations})")
    if not torch.isfinite(scores).all():
        raise DataError("sinkhorn: non-finite scores")
    log_p = scores.double() / epsilon
    log_mu = word_prior.double().to(scores.device).clamp_min(1e-300).log()
    log_row = -math.log(B)
    for _ in range(iterations):
        log_p = log_p + (log_mu - torch.logsumexp(log_p, dim=0))[None, :]   # columns -> word prior
        log_p = log_p + (log_row - torch.logsumexp(log_p, dim=1))[:, None]  # rows -> 1/B
    return log_p.exp().float()


def swapped_prediction_loss(visual_scores: torch.Tensor, text_scores: torch.Tensor, visual_codes: torch.Tensor,
                            text_codes: torch.Tensor, temperature: float) -> dict[str, torch.Tensor]:
    """SwAV/VLAP swapped prediction: the visual side predicts the text codes and vice versa.

    ``*_scores`` [B, K] cosine similarities to the words, ``*_codes`` [B, K] rows summing to 1
    (targets, detached). Returns ``loss`` (the two cross-entropies summed, each a batch mean)
    and the two terms ``v_from_t`` (visual predicts text codes) and ``t_from_v``."""
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    log_pv = F.log_softmax(visual_scores.float() / temperature, dim=-1)
    log_pt = F.log_softmax(text_scores.float() / temperature, dim=-1)
    v_from_t = -(text_codes.detach().float() * log_pv).sum(-1).mean()
    t_from_v = -(visual_codes.detach().float() * log_pt).sum(-1).mean()
    return {"loss": v_from_t + t_from_v, "v_from_t": v_from_t, "t_from_v": t_from_v}


# ---------------------------------------------------------------------- the module
class AssignmentPrediction(nn.Module):
    """Frozen word space + word prior; scores, Sinkhorn codes and the swapped-prediction loss."""

    def __init__(self, word_embeddings: torch.Tensor, word_prior: torch.Tensor, epsilon: float = 0.01,
                 iterations: int = 3, temperature: float = 0.1):
        super().__init__()
        if word_embeddings.ndim != 2 or word_prior.shape != (word_embeddings.shape[0],):
            raise ConfigError(f"word embeddings {tuple(word_embeddings.shape)} and prior {tuple(word_prior.shape)} "
                              "do not match ([K, D] and [K])")
        if not torch.isfinite(word_embeddings).all():
            raise DataError("word embeddings contain non-finite values")
        if (word_prior < 0).any() or abs(float(word_prior.sum()) - 1) > 1e-4:
            raise DataError(f"word prior must be a distribution (>= 0, sums to 1; sums to {float(word_prior.sum()):.6f})")
        # frozen and re-derivable from the LLM source: not saved in checkpoints
        self.register_buffer("words", F.normalize(word_embeddings.float(), dim=-1), persistent=False)
        self.register_buffer("raw_words", word_embeddings.float(), persistent=False)
        self.register_buffer("prior", word_prior.float())  # saved: it records the training texts' statistics
        self.epsilon, self.iterations, self.temperature = float(epsilon), int(iterations), float(temperature)

    @property
    def dim(self) -> int:
        return int(self.words.shape[1])

    def scores(self, z: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of each representation [B, D] to every word: [B, K]."""
        return F.normalize(z.float(), dim=-1) @ self.words.T

    def codes(self, scores: torch.Tensor) -> torch.Tensor:
        """Per-sample assignment over words (rows sum to 1): B × the Sinkhorn plan."""
        return sinkhorn_knopp(scores, self.prior, self.epsilon, self.iterations) * scores.shape[0]

    def forward(self, visual: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        """``visual``, ``text`` [B, D] paired representations -> the swapped-prediction loss and terms."""
        if visual.shape != text.shape or visual.shape[-1] != self.dim:
            raise ValueError(f"visual {tuple(visual.shape)} and text {tuple(text.shape)} must both be [B, {self.dim}]")
        sv, st = self.scores(visual), self.scores(text)
        return swapped_prediction_loss(sv, st, self.codes(sv.detach()), self.codes(st.detach()), self.temperature)


class VLAPProjector(nn.Module):
    """The one trainable layer: visual tokens [B, N, visual_dim] -> word-embedding space [B, N, D]."""

    def __init__(self, visual_dim: int, embed_dim: int):
        super().__init__()
        self.linear = nn.Linear(visual_dim, embed_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.linear(tokens)


def mean_pool(tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over tokens [B, N, D] (``mask`` [B, N], 1/True = real token)."""
    if mask is None:
        return tokens.mean(1)
    m = mask.to(tokens.dtype).unsqueeze(-1)
    count = m.sum(1)
    if (count == 0).any():
        raise DataError("a text has no tokens to pool")
    return (tokens * m).sum(1) / count


def text_representation(kind: str, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        word_embeddings: torch.Tensor, lm: nn.Module | None = None) -> torch.Tensor:
    """A caption's representation in the word-embedding space [B, D], from frozen weights only.

    ``embeddings``: the mean of its tokens' word embeddings (no LLM forward). ``llm_hidden``: the
    mean of the frozen LLM's last hidden states after its final norm: the vectors its LM head
    scores against the (tied, for SmolLM2) word embeddings, so they live in the same space; our
    reading of VLAP is that it takes the text representation from the frozen LLM (not checked against
    the paper's equations, which were not readable offline)."""
    if kind == "embeddings":
        return mean_pool(F.embedding(input_ids, word_embeddings), attention_mask)
    if kind == "llm_hidden":
        if lm is None:
            raise ConfigError("text_features: llm_hidden needs the LLM loaded")
        with torch.no_grad():
            hidden = lm.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return mean_pool(hidden.float(), attention_mask)
    raise ConfigError(f"text_features {kind!r} is not one of {TEXT_FEATURES}")


def load_word_embeddings(source: str) -> torch.Tensor:
    """The LLM's input word-embedding table [K, D] (fp32), read alone from its source."""
    from ..loading import load_extra_tensors

    return load_extra_tensors(source, ["word_embeddings"], dtype=torch.float32)["word_embeddings"]
