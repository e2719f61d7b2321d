"""How the fused encoder's image–text matching (ITM) head turns into retrieval score matrices.

Two protocols, both reported by the task (``run.full_itm``):

* **ITC top-k re-ranking** (ALBEF, BLIP; the default): every pair gets the contrastive (ITC)
  cosine similarity; only each query's top ``k_test`` candidates are scored by the ITM head, the
  rest get :data:`NOT_RERANKED`. R@k for k <= ``k_test`` is then bounded by the ITC recall at
  ``k_test``: a true pair outside the ITC top-k can never come back.
* **Full ITM** (METER, Dou et al. CVPR 2022, and ViLT before it): every image–text pair is scored by
  the ITM head alone (the positive-class logit: METER's ``rank_output`` is initialised from row 1
  of its ITM classifier), so the fused encoder ranks everything. One matrix [images x texts]
  serves both directions. Cost: ``images x texts`` fused forward passes.

The re-ranking score of a candidate (``run.rerank_score``), with ``itm`` the ITM head's two
logits [no match, match] and ``sim`` the ITC cosine similarity (no temperature):

* ``blip``: ``itm[:, 1] + sim`` (BLIP, Li et al. ICML 2022, ``train_retrieval.py`` of
  salesforce/BLIP: ``score = itm_head(...)[:, 1]; score_matrix[i, topk] = score + topk_sim``);
* ``albef``: ``itm[:, 1]`` (ALBEF, Li et al. NeurIPS 2021, ``Retrieval.py`` of salesforce/ALBEF);
* ``margin_sim``: ``itm[:, 1] - itm[:, 0] + sim`` — the logit margin (the log-odds of a match)
  plus the similarity: this library's earlier rule, neither BLIP's nor ALBEF's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from mmllm.errors import ConfigError, DataError

RERANK_SCORES = ("blip", "albef", "margin_sim")
# score of the pairs a query's ITC top-k left out (ALBEF/BLIP fill them with -100); low enough for any logit
NOT_RERANKED = -1.0e4

PairLogits = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (image rows, text rows) -> ITM logits [n, 2]


def rerank_score(itm_logits: np.ndarray, sim: np.ndarray, rule: str) -> np.ndarray:
    """The re-ranking score of candidates from their ITM logits [n, 2] and ITC similarities [n]."""
    itm_logits, sim = np.asarray(itm_logits, dtype=np.float64), np.asarray(sim, dtype=np.float64)
    if itm_logits.ndim != 2 or itm_logits.shape[1] != 2 or itm_logits.shape[0] != sim.shape[0]:
        raise DataError(
            f"ITM logits of shape {itm_logits.shape} do not match {sim.shape[0]} similarities (need [n, 2])"
        )
    if rule == "blip":
        return itm_logits[:, 1] + sim
    if rule == "albef":
        return itm_logits[:, 1]
    if rule == "margin_sim":
        return itm_logits[:, 1] - itm_logits[:, 0] + sim
    raise ConfigError(f"run.rerank_score must be one of {RERANK_SCORES}, got {rule!r}")


def _check_finite(name: str, values: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(values)):
        raise DataError(
            f"{name}: {int(np.count_nonzero(~np.isfinite(values)))} non-finite ITM score(s): refusing to rank them"
        )
    return values


def topk_rerank(
    sims: np.ndarray,
    pair_logits: PairLogits,
    k: int,
    rule: str,
    transpose: bool = False,
    rows: Sequence[int] | None = None,
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Re-rank each row's ITC top-``k`` columns: {row: (columns, scores)} for ``rows`` (default all).

    ``sims`` is [queries x candidates]; ``transpose`` says the queries are texts (so the pair passed
    to ``pair_logits`` is (candidate image, query text)). Ties in the similarity keep column order.
    """
    n_rows, n_cols = sims.shape
    k = min(k, n_cols)
    out = {}
    for r in range(n_rows) if rows is None else rows:
        top = np.argsort(-sims[r], kind="stable")[:k]
        query = np.full(len(top), r)
        logits = pair_logits(top, query) if transpose else pair_logits(query, top)
        out[r] = (top, _check_finite("re-ranked pairs", rerank_score(logits, sims[r, top], rule)))
    return out


def fill_reranked(parts: dict[int, tuple[np.ndarray, np.ndarray]], shape: tuple[int, int]) -> np.ndarray:
    """The full score matrix: re-ranked candidates get their score, every other pair :data:`NOT_RERANKED`."""
    full = np.full(shape, NOT_RERANKED, dtype=np.float64)
    for r, (cols, scores) in parts.items():
        full[r, cols] = scores
    return full


def full_itm_scores(
    n_images: int,
    n_texts: int,
    pair_logits: PairLogits,
    batch_size: int,
    image_rows: Sequence[int] | None = None,
    progress: bool = False,
) -> dict[int, np.ndarray]:
    """METER's protocol: the ITM match logit of every (image, text) pair, ``batch_size`` pairs per
    forward pass; {image: scores over all texts} for ``image_rows`` (default all). ``progress``
    shows a tqdm bar over the pairs (the whole matrix is slow: images x texts fused passes)."""
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ConfigError(f"batch size must be positive, got {batch_size}")
    rows = list(range(n_images) if image_rows is None else image_rows)
    pairs_img = np.repeat(np.asarray(rows, dtype=np.int64), n_texts)
    pairs_txt = np.tile(np.arange(n_texts, dtype=np.int64), len(rows))
    scores = np.empty(len(pairs_img), dtype=np.float64)
    with tqdm(total=len(pairs_img), desc="full ITM pairs", unit="pair", disable=not progress) as bar:
        for start in range(0, len(pairs_img), batch_size):
            stop = start + batch_size
            logits = np.asarray(pair_logits(pairs_img[start:stop], pairs_txt[start:stop]), dtype=np.float64)
            scores[start:stop] = logits[:, 1]
            bar.update(len(logits))
    _check_finite("full ITM", scores)
    return {r: scores[i * n_texts : (i + 1) * n_texts] for i, r in enumerate(rows)}
