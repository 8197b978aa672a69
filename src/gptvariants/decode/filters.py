"""What generation does to the scores of the next token before choosing it: the repetition
penalty, a sigmoid head's sets, a conformal set, temperature, top-k and top-p (``generate.py``'s module docstring
gives the order). Every option is one value for the batch, or a (B, 1) tensor of one per row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Option = float | int | torch.Tensor  # one value for every row, or (B, 1) values, one per row


def apply_repetition_penalty(scores: torch.Tensor, present: torch.Tensor, penalty: Option) -> torch.Tensor:
    """CTRL's penalty (Keskar et al., 2019): for tokens already present (bool (B, V)) divide a
    positive score by ``penalty`` and multiply a negative one, so penalty > 1 always lowers them.

    On log-probabilities (sigmoid heads, MC averages) every score is negative, so the penalty
    multiplies the log-probability of each present token.
    """
    if not isinstance(penalty, torch.Tensor) and penalty == 1.0:
        return scores
    penalised = torch.where(scores > 0, scores / penalty, scores * penalty)
    return torch.where(present, penalised, scores)


def restrict_to_sets(
    scores: torch.Tensor, set_probs: torch.Tensor, tau: Option, rows: bool | torch.Tensor = True
) -> torch.Tensor:
    """Sigmoid ``set`` mode: the scores of tokens outside {v : s_v > tau} become -inf, where s are
    the draw-averaged sigmoid scores (``set_probs``); if no token clears tau, all but the argmax
    of s. ``rows``: True for every row, or (B, 1) bool for the rows in set mode."""
    allowed = set_probs > tau
    fallback = F.one_hot(set_probs.argmax(-1), set_probs.shape[-1]).bool()
    allowed = torch.where(allowed.any(-1, keepdim=True), allowed, fallback)
    if isinstance(rows, torch.Tensor):
        allowed = allowed | ~rows
    return scores.masked_fill(~allowed, float("-inf"))


def conformal_filter(scores: torch.Tensor, probs: torch.Tensor, min_prob: Option) -> torch.Tensor:
    """Conformal nucleus sampling: the scores of tokens outside the LAC conformal set
    {v : p_v >= 1 - q} (``predict.conformal``; ``min_prob`` = 1 - q) become -inf, p the predictive
    (``Draws.probs``). The set is never empty: if no token clears the threshold, the argmax of p stays."""
    allowed = probs >= min_prob
    allowed |= F.one_hot(probs.argmax(-1), probs.shape[-1]).bool()
    return scores.masked_fill(~allowed, float("-inf"))


def top_k_filter(scores: torch.Tensor, k: int | torch.Tensor) -> torch.Tensor:
    """Scores outside the k largest of each row set to -inf (ties with the k-th are kept)."""
    V = scores.shape[-1]
    if isinstance(k, torch.Tensor):
        k = k.clamp(max=V)
        kth = torch.topk(scores, int(k.max()), dim=-1).values.gather(-1, k - 1)
    elif k >= V:
        return scores
    else:
        kth = torch.topk(scores, k, dim=-1).values[..., -1:]
    return scores.masked_fill(scores < kth, float("-inf"))


def top_p_filter(scores: torch.Tensor, p: float | torch.Tensor) -> torch.Tensor:
    """Nucleus filter: keep the most probable tokens of softmax(scores) whose cumulative
    probability first reaches ``p`` (at least one token); the others become -inf. p >= 1 keeps all."""
    per_row = isinstance(p, torch.Tensor)
    if not per_row and p >= 1.0:
        return scores
    probs = torch.softmax(scores, dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    before = sorted_p.cumsum(-1) - sorted_p  # mass of the more probable tokens
    drop_sorted = before >= p
    if per_row:  # rows with p >= 1 keep everything, whatever the rounding of the cumulative sum
        drop_sorted &= p < 1.0
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return scores.masked_fill(drop, float("-inf"))


def sampling_probs(
    scores: torch.Tensor,
    temperature: Option = 1.0,
    top_k: int | torch.Tensor | None = None,
    top_p: Option | None = None,
) -> torch.Tensor:
    """The distribution one samples from: softmax of scores / temperature after top-k, then top-p."""
    if not isinstance(temperature, torch.Tensor) and temperature <= 0:
        raise ValueError("temperature <= 0 means greedy decoding; take the argmax instead")
    scores = scores / temperature
    if top_k is not None:
        scores = top_k_filter(scores, top_k)
    if top_p is not None:
        scores = top_p_filter(scores, top_p)
    return torch.softmax(scores, dim=-1)


def draw_rows(probs: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One token per row of ``probs`` (n, V), row r drawn from ``generators[r]`` alone: the
    inverse CDF at one uniform per row, u in (0, 1], i.e. the first token whose cumulative
    probability reaches u times the total (never a token of probability 0). One generator call
    per row, where torch.multinomial would take one call per row and generator."""
    u = torch.cat([torch.rand(1, generator=g, device=probs.device) for g in generators])
    cdf = probs.cumsum(-1)
    return (cdf < (1.0 - u)[:, None] * cdf[:, -1:]).sum(-1)
