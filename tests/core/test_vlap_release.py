"""VLAP's training signal against the released code (github.com/park-jungin/vlap, ``train.py``, commit 5caf538).

Every expected value here is written out in plain numpy from the released file's lines, never taken
from :mod:`mmllm.models.vlap`: the swapped loss (l. 211-217), its temperature (l. 245), the total
``0.1 * opt_loss + caption_loss`` (l. 527), the text side (l. 493-495) and the assignment shortcut
``distributed_sinkhorn`` (l. 584-594).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from mmllm.errors import ConfigError
from mmllm.models.vlap import (
    AssignmentPrediction,
    prior_softmax_codes,
    swapped_prediction_loss,
    text_representation,
)
from mmllm_retrieval.vlap_model import VLAPRetrievalModel, VLAPRetrievalOptions

ROOT = Path(__file__).resolve().parents[2]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def _release_sinkhorn(scores: np.ndarray, prior: np.ndarray, eps: float, iters: int) -> np.ndarray:
    """The proper Sinkhorn-Knopp (SwAV's loop, the word prior in place of the uniform K marginal), float64."""
    q = np.exp(scores / eps).T  # K x B
    b = q.shape[1]
    for _ in range(iters):
        q = q / q.sum(axis=1, keepdims=True) * prior[:, None]  # each word's row sums to its prior mass
        q = q / q.sum(axis=0, keepdims=True) / b  # each sample's column sums to 1/B
    return (q * b).T  # B x K, each sample's codes sum to 1


def test_release_defaults():
    """train.py l. 245 (temperature 0.01), l. 247/251 (epsilon 0.01, 3 iterations), l. 217 (the two terms / 2),
    l. 527 (0.1 * opt_loss + caption_loss), l. 493-495 (text = the frozen LM's hidden states, mean-pooled)."""
    opts = VLAPRetrievalOptions()
    assert (opts.temperature, opts.epsilon, opts.sinkhorn_iterations) == (0.01, 0.01, 3)
    assert (opts.swap_loss, opts.assign_weight, opts.caption_weight) == ("mean", 0.1, 1.0)
    assert opts.text_features == "llm_hidden" and opts.assignment == "sinkhorn"
    cfg = yaml.safe_load((ROOT / "configs/retrieval/emoji_vlap_smollm2.yaml").read_text())["model"]
    assert (cfg["temperature"], cfg["assign_weight"], cfg["swap_loss"], cfg["text_features"]) == (
        0.01,
        0.1,
        "mean",
        "llm_hidden",
    )
    vqa = yaml.safe_load((ROOT / "configs/vqa/easyvqa_vlap_smollm2.yaml").read_text())["model"]["vlap"]
    assert (vqa["temperature"], vqa["assign_weight"]) == (0.01, 0.1)
    words = torch.randn(3, 4)
    assign = AssignmentPrediction(words, torch.full((3,), 1 / 3))
    assert (assign.temperature, assign.swap_loss, assign.assignment) == (0.01, "mean", "sinkhorn")
    # the positional constructor of projects/vqa/mmllm_vqa/vlap_task.py keeps working
    old = AssignmentPrediction(words, torch.full((3,), 1 / 3), 0.01, 3, 0.1)
    assert (old.epsilon, old.iterations, old.temperature) == (0.01, 3, 0.1)
    with pytest.raises(ConfigError):
        AssignmentPrediction(words, torch.full((3,), 1 / 3), swap_loss="max")
    with pytest.raises(ConfigError):
        AssignmentPrediction(words, torch.full((3,), 1 / 3), assignment="uniform")


def test_swapped_loss_2x3_at_release_temperature():
    """2 samples x 3 words, tau = 0.01 (train.py l. 245); the terms of l. 215-216 averaged as l. 217.

    Scores are tau * log(ratios), so each softmax is a simple fraction written out below."""
    tau = 0.01
    visual = tau * np.array([[0.0, math.log(2), 0.0], [math.log(3), 0.0, 0.0]])  # p_v = [1/4 1/2 1/4], [3/5 1/5 1/5]
    text = tau * np.array([[0.0, 0.0, 0.0], [math.log(4), 0.0, 0.0]])  # p_t = [1/3 1/3 1/3], [2/3 1/6 1/6]
    q_t = np.array([[0.0, 1.0, 0.0], [0.5, 0.5, 0.0]])
    q_v = np.array([[1 / 3, 1 / 3, 1 / 3], [0.0, 0.0, 1.0]])
    p_v = np.array([[1 / 4, 1 / 2, 1 / 4], [3 / 5, 1 / 5, 1 / 5]])
    p_t = np.array([[1 / 3, 1 / 3, 1 / 3], [2 / 3, 1 / 6, 1 / 6]])
    v_from_t = -np.mean(np.sum(q_t * np.log(p_v), axis=1))  # l. 215
    t_from_v = -np.mean(np.sum(q_v * np.log(p_t), axis=1))  # l. 216
    l_map = (v_from_t + t_from_v) / 2  # l. 217
    out = swapped_prediction_loss(
        torch.tensor(visual, dtype=torch.float32),
        torch.tensor(text, dtype=torch.float32),
        torch.tensor(q_v, dtype=torch.float32),
        torch.tensor(q_t, dtype=torch.float32),
        VLAPRetrievalOptions().temperature,
    )
    assert out["v_from_t"].item() == pytest.approx(v_from_t, rel=1e-5)
    assert out["t_from_v"].item() == pytest.approx(t_from_v, rel=1e-5)
    assert out["loss"].item() == pytest.approx(l_map, rel=1e-5)
    # the former setting stays reachable: the two terms summed
    summed = swapped_prediction_loss(
        torch.tensor(visual / tau * 0.1, dtype=torch.float32),
        torch.tensor(text / tau * 0.1, dtype=torch.float32),
        torch.tensor(q_v, dtype=torch.float32),
        torch.tensor(q_t, dtype=torch.float32),
        0.1,
        "sum",
    )
    assert summed["loss"].item() == pytest.approx(v_from_t + t_from_v, rel=1e-5)
    # the total of l. 527 with a caption loss of 2.5
    assert 0.1 * l_map + 2.5 == pytest.approx(0.1 * out["loss"].item() + 2.5, rel=1e-6)


class _Vision(nn.Module):
    """A stand-in frozen encoder: fixed tokens [B, N, width]."""

    def __init__(self, tokens: torch.Tensor):
        super().__init__()
        self.tokens = tokens
        self.width = tokens.shape[-1]

    def set_trainable(self, flag: bool) -> None:
        self.requires_grad_(flag)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.tokens


class _Captioner(nn.Module):
    """A stand-in captioner: a fixed caption loss."""

    lm = None

    def forward(self, *args) -> torch.Tensor:
        return torch.tensor(2.5)


def test_retrieval_model_total_is_release_weighting_2x3():
    """The whole default training signal on 2 images x 3 words, by hand: projected visual tokens
    mean-pooled and L2-normalised (train.py l. 189-193), cosine to the normalised word table (l. 191, 199-200),
    codes by Sinkhorn with the prior (the paper), tau = 0.01 (l. 245), the swapped terms averaged (l. 215-217),
    total 0.1 * L_map + L_cap (l. 527)."""
    torch.manual_seed(0)
    words = torch.randn(3, 4)
    prior = torch.tensor([0.5, 0.3, 0.2])
    tokens = torch.randn(2, 5, 6)  # 2 images, 5 visual tokens of width 6
    text = torch.randn(2, 4)
    opts = VLAPRetrievalOptions()
    assign = AssignmentPrediction(words, prior, opts.epsilon, opts.sinkhorn_iterations, opts.temperature)
    model = VLAPRetrievalModel(_Vision(tokens), assign, opts, _Captioner())
    model.text_features = lambda ids, mask: text  # type: ignore[method-assign]
    batch = {k: None for k in ("prompt_ids", "prompt_mask", "answer_ids", "answer_mask", "input_ids", "attention_mask")}
    out = model({"images": torch.zeros(2), **batch})

    w = model.projector.linear.weight.detach().double().numpy()
    b = model.projector.linear.bias.detach().double().numpy()
    emb_v = (tokens.double().numpy() @ w.T + b).mean(axis=1)
    emb_v = emb_v / np.linalg.norm(emb_v, axis=1, keepdims=True)
    vocab = words.double().numpy()
    vocab = vocab / np.linalg.norm(vocab, axis=1, keepdims=True)
    emb_t = text.double().numpy()
    code_v = emb_v @ vocab.T
    code_t = (emb_t / np.linalg.norm(emb_t, axis=1, keepdims=True)) @ vocab.T
    q_v = _release_sinkhorn(code_v, prior.double().numpy(), 0.01, 3)
    q_t = _release_sinkhorn(code_t, prior.double().numpy(), 0.01, 3)
    sub = -np.mean(np.sum(q_t * _log_softmax(code_v / 0.01), axis=1))
    sub -= np.mean(np.sum(q_v * _log_softmax(code_t / 0.01), axis=1))
    l_map = sub / 2
    assert out["assign_loss"].item() == pytest.approx(l_map, rel=1e-4)
    assert out["caption_loss"].item() == 2.5
    assert out["loss"].item() == pytest.approx(0.1 * l_map + 2.5, rel=1e-5)


def test_prior_softmax_shortcut_by_hand():
    """The release's ``distributed_sinkhorn`` (train.py l. 584-594, the 2-D branch): per iteration
    ``Q *= softmax(vocab_dist / 0.25)`` over words, then each sample normalised over words.

    Row 1 (equal scores) by hand: prior [1/2, 1/4, 1/4] gives w ∝ [e^2, e, e]; three iterations give
    q ∝ w^3 ∝ [e^6, e^3, e^3], i.e. [e^3, 1, 1] / (e^3 + 2)."""
    prior = torch.tensor([0.5, 0.25, 0.25])
    scores = torch.tensor([[0.2, 0.2, 0.2], [0.05, 0.0, 0.01]])
    codes = prior_softmax_codes(scores, prior, epsilon=0.01, iterations=3)
    e3 = math.exp(3)
    assert codes[0].tolist() == pytest.approx([e3 / (e3 + 2), 1 / (e3 + 2), 1 / (e3 + 2)], rel=1e-5)
    # row 2 with the release's loop written out (exp domain, K x B as there), float64
    q = np.exp(scores.double().numpy() / 0.01).T
    w = np.exp(prior.double().numpy() / 0.25)
    w = w / w.sum()
    for _ in range(3):
        q = q * w[:, None]
        q = q / q.sum(axis=0, keepdims=True)
        q = q / 2
    q = (q * 2).T
    assert codes.double().numpy() == pytest.approx(q, rel=1e-5)
    # not a transport plan: the words' mass is not the prior (unlike Sinkhorn)
    assert not np.allclose(q.mean(axis=0), prior.numpy(), atol=1e-2)
    assign = AssignmentPrediction(torch.randn(3, 4), prior, assignment="prior_softmax")
    assert torch.allclose(assign.codes(scores), codes)
    # the Sinkhorn default is different on the same scores
    assert not torch.allclose(AssignmentPrediction(torch.randn(3, 4), prior).codes(scores), codes, atol=1e-3)


def test_llm_hidden_text_side_is_the_release_pooling():
    """train.py l. 493-495: ``TextModel(...).last_hidden_state`` times the attention mask, ``.mean(1)`` over the
    padded length; after the L2 normalisation of l. 200 that equals our masked mean (the same direction)."""
    from tiny_llms import tiny_model

    lm = tiny_model("llama")
    ids = torch.tensor([[5, 7, 9, 0], [3, 4, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    ours = text_representation("llm_hidden", ids, mask, lm.get_input_embeddings().weight, lm)
    with torch.no_grad():
        hidden = lm(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
    release = (hidden * mask.unsqueeze(2)).mean(1)
    cos = torch.nn.functional.cosine_similarity(ours, release.float(), dim=-1)
    assert cos.tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
