"""Selection rules: which of a teacher's tokens make a position's set (top-k with nucleus,
minimum probability, ratio and perplexity filter, or sampled sets), one chunk at a time."""

from __future__ import annotations

import numpy as np
import torch

from ..common.errors import InputError
from .base import TOKENS_PER_FORWARD, Teacher

ORACLE_MIN_PROB = 0.01  # the oracle's default support threshold when min_prob is 0


def select(
    probs: torch.Tensor, k: int, top_p: float | None, min_prob: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher candidates per row: (ids (m, k) int64, their probs (m, k), keep (m, k) bool).

    ids are sorted by probability; keep is a prefix per row: the top k, cut to the smallest
    prefix whose mass reaches top_p (the token crossing top_p is kept), to probs >= min_prob,
    and never a zero-probability token.
    """
    p, ids = probs.topk(k, dim=-1)
    return ids, p, _keep(p, top_p, min_prob)


def _keep(p: torch.Tensor, top_p: float | None, min_prob: float) -> torch.Tensor:
    """The rule of ``select`` on probabilities p (m, k) sorted in descending order."""
    keep = (p > 0) & (p >= min_prob)
    if top_p is not None:
        keep &= (p.cumsum(-1) - p) < top_p  # mass before this token is still short of top_p
    return keep


def sample_set(
    probs: torch.Tensor, draws: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The distinct tokens among `draws` independent samples from each row of probs, in the
    layout of ``select``: (ids (m, draws), their probs, keep (m, draws)) with keep a prefix.

    With the true next token as one more draw, a token v is in the set with probability
    1 - (1 - p_v)^(draws + 1) when the teacher's p is the data's distribution: the relation
    ``SigmoidBCE(set_draws=draws + 1)`` inverts to read p back from a sigmoid head.
    """
    m = probs.shape[0]
    if draws == 0:
        empty = torch.zeros((m, 0), dtype=torch.int64, device=probs.device)
        return empty, empty.float(), empty.bool()
    ids = torch.multinomial(probs.float(), draws, replacement=True, generator=generator).sort(dim=1).values
    keep = torch.ones_like(ids, dtype=torch.bool)
    keep[:, 1:] = ids[:, 1:] != ids[:, :-1]
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # distinct ids first, ascending
    ids, keep = ids.gather(1, order), keep.gather(1, order)
    return ids, probs.gather(1, ids), keep


def _check_rule(select: str, top_p: float | None, min_prob: float, ratio: float, ppl_filter: float | None) -> None:
    if select not in ("top", "sample"):
        raise InputError(f"select must be 'top' or 'sample', not {select!r}")
    if select == "sample" and (top_p is not None or min_prob > 0 or ratio < 1.0 or ppl_filter is not None):
        raise InputError(
            "select='sample' draws from the teacher's whole distribution at every position: top_p, min_prob, "
            "ratio < 1 and ppl_filter would bias the draws, so they are not allowed with it "
            "(drop top_p, min_prob, ratio and ppl_filter)"
        )


def readout_draws(select: str, k: int) -> int:
    """``set_draws`` of the sigmoid readout for sets of width k built by rule ``select``: the k
    draws of a sampled set, 1 (plain normalisation) for top-k sets."""
    return k if select == "sample" else 1


class _Selector:
    """Turns one chunk of teacher predictions into stored rows (ids, probs); see build_targets."""

    def __init__(
        self,
        teacher: Teacher,
        k: int,
        top_p: float | None,
        min_prob: float,
        ratio: float,
        ppl_filter: float | None,
        ppl_window: int,
        batch_size: int,
        seed: int,
        sentinel: int,
        rule: str = "top",
    ) -> None:
        self.t, self.k, self.top_p, self.min_prob, self.ratio = teacher, k, top_p, min_prob, ratio
        self.ppl_filter, self.ppl_window, self.batch_size = ppl_filter, ppl_window, batch_size
        self.seed, self.sentinel, self.rule = seed, sentinel, rule

    def chunk(
        self, tokens: np.ndarray, a: int, b: int, split_index: int, chunk_index: int
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """(ids (m, k), probs (m, k), rows holding teacher candidates) for positions a..b-1."""
        n, m, k = len(tokens), b - a, self.k
        ids, probs, keep = np.zeros((m, k), np.int64), np.zeros((m, k), np.float32), np.zeros((m, k), bool)
        # the true next token (-1 for the split's last row) and the teacher's probability of it
        y = np.full(m, -1, np.int64)
        y[: min(m, n - 1 - a)] = tokens[a + 1 : b + 1]
        py = np.zeros(m, np.float32)
        yt = torch.from_numpy(y).to(self.t.device)
        # randomness depends on (seed, split, chunk) only, so a resumed build draws the same
        rng = np.random.default_rng([self.seed, split_index, chunk_index])
        chosen = rng.random(m) < self.ratio if self.ratio < 1.0 else None  # rows given teacher candidates
        g = None
        if self.rule == "sample":
            g = torch.Generator(self.t.device).manual_seed(int(rng.integers(2**62)))
        for off, p, inverse in self.t.stream_unique(tokens, a, b):
            if g is not None and inverse is not None:  # draws are per position, not per distinct row
                p, inverse = p[inverse], None
            m_ = len(p) if inverse is None else len(inverse)
            span = slice(off, off + m_)
            rows = torch.arange(m_, device=p.device) if inverse is None else inverse
            py[span] = p[rows, yt[span].clamp(min=0)].float().cpu().numpy()
            dest = np.arange(off, off + m_)
            if inverse is None and chosen is not None:  # select only where candidates are kept
                dest = dest[chosen[span]]
                p = p[torch.from_numpy(dest - off).to(p.device)]
            ti, tp, tkeep = select(p, k, self.top_p, self.min_prob) if g is None else sample_set(p, k - 1, g)
            i_, p_, keep_ = ti.cpu().numpy(), tp.float().cpu().numpy(), tkeep.cpu().numpy()
            if inverse is not None:
                inv = inverse.cpu().numpy()
                i_, p_, keep_ = i_[inv], p_[inv], keep_[inv]
            w = i_.shape[1]  # k, or k - 1 draws for the sample rule (the true token is the k-th)
            ids[dest, :w], probs[dest, :w], keep[dest, :w] = i_, p_, keep_
        if chosen is not None:
            keep &= chosen[:, None]
        if self.ppl_filter is not None:  # the true token is never filtered, nor scored
            is_y = ids == y[:, None]
            keep = (keep & self._ppl_keep(tokens, a, ids, keep & ~is_y)) | (keep & is_y)
            # compact kept candidates to the left (stable: by probability)
            order = np.argsort(~keep, axis=1, kind="stable")
            ids, probs, keep = (np.take_along_axis(x, order, 1) for x in (ids, probs, keep))
        count = keep.sum(1)  # kept candidates are now a prefix of each row
        n_teacher = int((count > 0).sum())
        r = np.flatnonzero((y >= 0) & ~((ids == y[:, None]) & keep).any(1))
        slot = np.minimum(count[r], k - 1)  # a full row gives up its least probable candidate
        ids[r, slot], probs[r, slot], keep[r, slot] = y[r], py[r], True
        ids[~keep], probs[~keep] = self.sentinel, 0.0
        return ids, probs, n_teacher

    def _ppl_keep(self, tokens: np.ndarray, a: int, ids: np.ndarray, keep: np.ndarray) -> np.ndarray:
        """False for kept candidates c whose substitution for tokens[i+1] pushes the window's
        perplexity above the threshold. All (position, candidate) windows of the chunk go
        through the teacher in batches of batch_size windows, not one forward per candidate."""
        n, W = len(tokens), min(self.ppl_window, len(tokens))
        r, c = np.nonzero(keep)
        j = a + r + 1  # the substituted index; the last row of a split has no next token
        ok = j < n
        r, c, j = r[ok], c[ok], j[ok]
        start = np.clip(j - W // 2, 0, n - W)
        win = tokens[start[:, None] + np.arange(W)].astype(np.int64)
        win[np.arange(len(j)), j - start] = ids[r, c]
        nll = np.empty(len(win), np.float64)
        bs = self.batch_size or max(1, TOKENS_PER_FORWARD // W)
        for s in range(0, len(win), bs):
            w = torch.from_numpy(win[s : s + bs]).to(self.t.device)
            nll[s : s + len(w)] = (-self.t.token_log_probs(w).double().mean(1)).cpu().numpy()
        out = np.ones_like(keep)
        out[r, c] = np.exp(nll) <= self.ppl_filter
        out[np.flatnonzero(a + np.arange(len(keep)) + 1 >= n)] = True
        return out
