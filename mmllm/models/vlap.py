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
  ``L_map = -1/(2B) Σ_b [ Σ_k q^t_bk log p^v_bk + Σ_k q^v_bk log p^t_bk ]``: the two terms
  *averaged*, τ = 0.01, as the released training script (``swap_loss="sum"``: SwAV's sum). The
  codes ``q`` are targets (no gradient), each row scaled to sum to 1.
* **Captioning.** The projected visual tokens are prefixed to the frozen LLM and the caption is
  the target of next-token cross-entropy (:class:`mmllm.models.llava.VisualPrefixLM`, projector
  ``none``); the release weights the total ``L = 0.1 · L_map + L_cap``.
* **Representations.** Visual: the projected visual tokens mean-pooled (then L2-normalised by the
  scores). Text (release): the frozen LM's last hidden states mean-pooled over the caption's tokens
  (``text_representation("llm_hidden")``); ``"embeddings"`` (the mean of the caption's input word
  embeddings, no LLM forward) is this repository's cheaper alternative.
* **Assignment variants.** ``assignment="sinkhorn"`` (default) is the proper Sinkhorn–Knopp with the
  word prior as column marginal, as the paper describes it. ``assignment="prior_softmax"`` is what
  the released code's ``distributed_sinkhorn`` actually computes: per iteration, multiply the
  plan by ``softmax(μ / 0.25)`` over words and normalise each sample over words, no marginal
  constraint over samples (:func:`prior_softmax_codes`).

Sources: the paper's abstract and overview (arXiv:2404.09632 and its reviews) state the pieces — the
LLM's word embeddings as a fixed central space, optimal transport with a word-distribution-aware
transportation polytope instead of a uniform one, predicting one modality's assignment from the
other, a captioning objective, one linear layer; ε = 0.01 and 3 iterations come from the issue.
The equations written here are SwAV's (Caron et al., NeurIPS 2020: Sinkhorn codes, swapped
cross-entropy) with those substitutions. The defaults follow the released training script
(github.com/park-jungin/vlap, ``train.py``: τ = 0.01 at l. 245, ε and iterations at l. 247–252,
the averaged swapped loss at l. 211–217, the text side at l. 493–495, ``0.1 · L_map + L_cap`` at
l. 527, the Sinkhorn shortcut at l. 584–594); docs/fidelity.md lists each choice.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError, DataError

TEXT_FEATURES = ("embeddings", "llm_hidden")
SWAP_LOSSES = ("mean", "sum")
ASSIGNMENTS = ("sinkhorn", "prior_softmax")
RELEASE_TEMPERATURE = 0.01  # train.py l. 245
RELEASE_ASSIGN_WEIGHT = 0.1  # train.py l. 527: loss = 0.1 * opt_loss + caption_loss
RELEASE_PRIOR_TEMPERATURE = 0.25  # train.py l. 589: (vocab_dist / 2.5e-1).softmax(dim=0)


# ---------------------------------------------------------------------- the word prior
def word_frequency_prior(
    token_lists: Iterable[Sequence[int]], vocab_size: int, smoothing: float = 0.1, ignore_ids: Sequence[int] = ()
) -> torch.Tensor:
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
def sinkhorn_knopp(
    scores: torch.Tensor, word_prior: torch.Tensor, epsilon: float = 0.01, iterations: int = 3
) -> torch.Tensor:
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
        log_p = log_p + (log_mu - torch.logsumexp(log_p, dim=0))[None, :]  # columns -> word prior
        log_p = log_p + (log_row - torch.logsumexp(log_p, dim=1))[:, None]  # rows -> 1/B
    return log_p.exp().float()


@torch.no_grad()
def prior_softmax_codes(
    scores: torch.Tensor,
    word_prior: torch.Tensor,
    epsilon: float = 0.01,
    iterations: int = 3,
    prior_temperature: float = RELEASE_PRIOR_TEMPERATURE,
) -> torch.Tensor:
    """The released code's shortcut for the assignment (``distributed_sinkhorn``, train.py l. 584–594).

    Starting from ``exp(scores/ε)``, each iteration multiplies every word's column by
    ``w = softmax(word_prior / prior_temperature)`` and normalises each sample's row over the words;
    the sample marginal is never enforced, so the result is ``q_b ∝ exp(s_b/ε) · w^iterations``: a
    per-sample softmax tilted by the prior, not a transport plan. Computed in the log domain (the
    release exponentiates directly, which overflows fp32 for cosines above ~0.89 at ε = 0.01).
    Returns per-sample codes [B, K] (rows sum to 1), fp32."""
    if scores.ndim != 2:
        raise ValueError(f"scores must be [B, K], got {tuple(scores.shape)}")
    K = scores.shape[1]
    if word_prior.shape != (K,):
        raise ValueError(f"word_prior has shape {tuple(word_prior.shape)}, scores imply ({K},)")
    if epsilon <= 0 or iterations < 1 or prior_temperature <= 0:
        raise ConfigError(
            f"the prior-softmax assignment needs epsilon > 0, iterations >= 1 and prior_temperature > 0 "
            f"(got {epsilon}, {iterations}, {prior_temperature})"
        )
    if not torch.isfinite(scores).all():
        raise DataError("assignment: non-finite scores")
    log_w = torch.log_softmax(word_prior.double().to(scores.device) / prior_temperature, dim=0)
    log_q = scores.double() / epsilon
    for _ in range(iterations):
        log_q = log_q + log_w[None, :]  # Q *= softmax(prior / 0.25)
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True)  # each sample sums to 1 over words
    return log_q.exp().float()


def swapped_prediction_loss(
    visual_scores: torch.Tensor,
    text_scores: torch.Tensor,
    visual_codes: torch.Tensor,
    text_codes: torch.Tensor,
    temperature: float,
    combine: str = "mean",
) -> dict[str, torch.Tensor]:
    """SwAV/VLAP swapped prediction: the visual side predicts the text codes and vice versa.

    ``*_scores`` [B, K] cosine similarities to the words, ``*_codes`` [B, K] rows summing to 1
    (targets, detached). Returns ``loss`` (the two cross-entropies, each a batch mean, averaged
    as in the release, train.py l. 215–217; ``combine="sum"``: summed as SwAV) and the two terms
    ``v_from_t`` (visual predicts text codes) and ``t_from_v``."""
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    if combine not in SWAP_LOSSES:
        raise ConfigError(f"swap_loss {combine!r} is not one of {SWAP_LOSSES}")
    log_pv = F.log_softmax(visual_scores.float() / temperature, dim=-1)
    log_pt = F.log_softmax(text_scores.float() / temperature, dim=-1)
    v_from_t = -(text_codes.detach().float() * log_pv).sum(-1).mean()
    t_from_v = -(visual_codes.detach().float() * log_pt).sum(-1).mean()
    total = v_from_t + t_from_v
    return {"loss": total / 2 if combine == "mean" else total, "v_from_t": v_from_t, "t_from_v": t_from_v}


# ---------------------------------------------------------------------- the module
class AssignmentPrediction(nn.Module):
    """Frozen word space + word prior; scores, assignment codes and the swapped-prediction loss.

    Defaults follow the released training script: τ = 0.01, the two swapped terms averaged
    (``swap_loss``), and the proper Sinkhorn–Knopp (``assignment="sinkhorn"``, the paper's
    description; ``"prior_softmax"``: the release's shortcut, :func:`prior_softmax_codes`)."""

    def __init__(
        self,
        word_embeddings: torch.Tensor,
        word_prior: torch.Tensor,
        epsilon: float = 0.01,
        iterations: int = 3,
        temperature: float = RELEASE_TEMPERATURE,
        *,
        swap_loss: str = "mean",
        assignment: str = "sinkhorn",
        prior_temperature: float = RELEASE_PRIOR_TEMPERATURE,
    ):
        super().__init__()
        if swap_loss not in SWAP_LOSSES:
            raise ConfigError(f"swap_loss {swap_loss!r} is not one of {SWAP_LOSSES}")
        if assignment not in ASSIGNMENTS:
            raise ConfigError(f"assignment {assignment!r} is not one of {ASSIGNMENTS}")
        if temperature <= 0 or prior_temperature <= 0:
            raise ConfigError(f"temperatures must be > 0 (got {temperature}, {prior_temperature})")
        if word_embeddings.ndim != 2 or word_prior.shape != (word_embeddings.shape[0],):
            raise ConfigError(
                f"word embeddings {tuple(word_embeddings.shape)} and prior {tuple(word_prior.shape)} "
                "do not match ([K, D] and [K])"
            )
        if not torch.isfinite(word_embeddings).all():
            raise DataError("word embeddings contain non-finite values")
        if (word_prior < 0).any() or abs(float(word_prior.sum()) - 1) > 1e-4:
            raise DataError(
                f"word prior must be a distribution (>= 0, sums to 1; sums to {float(word_prior.sum()):.6f})"
            )
        # frozen and re-derivable from the LLM source: not saved in checkpoints
        self.register_buffer("words", F.normalize(word_embeddings.float(), dim=-1), persistent=False)
        self.register_buffer("raw_words", word_embeddings.float(), persistent=False)
        self.register_buffer("prior", word_prior.float())  # saved: it records the training texts' statistics
        self.epsilon, self.iterations, self.temperature = float(epsilon), int(iterations), float(temperature)
        self.swap_loss, self.assignment, self.prior_temperature = swap_loss, assignment, float(prior_temperature)

    @property
    def dim(self) -> int:
        return int(self.words.shape[1])

    def scores(self, z: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of each representation [B, D] to every word: [B, K]."""
        return F.normalize(z.float(), dim=-1) @ self.words.T

    def codes(self, scores: torch.Tensor) -> torch.Tensor:
        """Per-sample assignment over words (rows sum to 1): B × the Sinkhorn plan, or the release's shortcut."""
        if self.assignment == "prior_softmax":
            return prior_softmax_codes(scores, self.prior, self.epsilon, self.iterations, self.prior_temperature)
        return sinkhorn_knopp(scores, self.prior, self.epsilon, self.iterations) * scores.shape[0]

    def forward(self, visual: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        """``visual``, ``text`` [B, D] paired representations -> the swapped-prediction loss and terms."""
        if visual.shape != text.shape or visual.shape[-1] != self.dim:
            raise ValueError(f"visual {tuple(visual.shape)} and text {tuple(text.shape)} must both be [B, {self.dim}]")
        sv, st = self.scores(visual), self.scores(text)
        return swapped_prediction_loss(
            sv, st, self.codes(sv.detach()), self.codes(st.detach()), self.temperature, self.swap_loss
        )


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


def text_representation(
    kind: str,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    word_embeddings: torch.Tensor,
    lm: nn.Module | None = None,
) -> torch.Tensor:
    """A caption's representation in the word-embedding space [B, D], from frozen weights only.

    ``llm_hidden`` (the release's): the mean of the frozen LLM's last hidden states after its final
    norm over the caption's tokens, as train.py l. 493–495 (``TextModel(...).last_hidden_state``
    masked and averaged; the release divides by the padded length, which the L2 normalisation
    of the scores cancels). ``embeddings``: the mean of its tokens' input word embeddings (no LLM
    forward; this repository's cheaper stand-in)."""
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
