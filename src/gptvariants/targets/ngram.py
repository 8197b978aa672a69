"""``ngram:N``: an interpolated Kneser-Ney n-gram teacher fitted on the train split."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ..common.errors import InputError
from ..data.dataset import TokenDataset
from .base import Teacher


class NgramTeacher(Teacher):
    """``ngram:N``: interpolated Kneser-Ney with one discount D = 0.75, fitted on the train split.

    p_o(w | u) = max(c_o(u, w) - D, 0) / c_o(u) + D n_o(u) / c_o(u) * p_{o-1}(w | u'), down to
    p_0 = 1/V, where u' drops the oldest token of u, c_N are raw counts, c_o for o < N are
    continuation counts (how many distinct tokens precede the o-gram), c_o(u) = sum_w c_o(u, w)
    and n_o(u) the number of distinct w after u. A context never seen falls back to p_{o-1};
    the first positions of a stream use the context they have.
    """

    D = 0.75

    def __init__(self, n: int, data: TokenDataset, device: torch.device) -> None:
        if n < 1:
            raise InputError(f"ngram order must be >= 1, got {n}")
        V = data.vocab_size
        if n * math.log2(V) >= 63:
            raise InputError(f"ngram:{n} with a vocabulary of {V} overflows 64-bit n-gram keys; use a smaller N")
        self.n, self.vocab_size, self.device, self.spec = n, V, device, f"ngram:{n}"
        train = np.asarray(data.split("train"), dtype=np.int64)
        t0 = time.perf_counter()
        # key of an o-gram t_1..t_o = sum_j t_j V^(o-j): dropping t_1 is `key % V^(o-1)`
        keys = np.zeros(len(train) - n + 1, dtype=np.int64)
        for j in range(n):
            keys = keys * V + train[j : len(train) - n + 1 + j]
        keys, counts = np.unique(keys, return_counts=True)
        self.orders: list[tuple[np.ndarray, ...]] = [None] * (n + 1)  # type: ignore[list-item]
        for o in range(n, 0, -1):
            if o < n:  # continuation counts: distinct (o+1)-grams ending in each o-gram
                keys, counts = np.unique(keys % V**o, return_counts=True)
            self.orders[o] = self._tables(keys, counts.astype(np.float64), V)
        self.fit_seconds = time.perf_counter() - t0

    @staticmethod
    def _tables(keys: np.ndarray, counts: np.ndarray, V: int) -> tuple[np.ndarray, ...]:
        """(sorted context keys, first pair index, pair count per context, total count, pair keys, next ids,
        pair counts)."""
        ctx = keys // V
        ctx_keys, first, n_types = np.unique(ctx, return_index=True, return_counts=True)
        total = np.add.reduceat(counts, first)
        return ctx_keys, first, n_types, total, keys, (keys % V).astype(np.int64), counts

    def _contexts(self, hist: np.ndarray, avail: np.ndarray, o: int) -> tuple[np.ndarray, np.ndarray]:
        """(index into order o's contexts, found) for rows whose last o-1 history tokens are hist[:, -(o-1):]."""
        ctx_keys = self.orders[o][0]
        key = np.zeros(len(hist), dtype=np.int64)
        for j in range(o - 1):
            key = key * self.vocab_size + hist[:, hist.shape[1] - (o - 1) + j]
        i = np.minimum(np.searchsorted(ctx_keys, key), len(ctx_keys) - 1)
        return i, (ctx_keys[i] == key) & (avail >= o - 1)

    def dense(self, hist: np.ndarray, avail: np.ndarray) -> np.ndarray:
        """(m, V) float32 probabilities for rows with history hist (m, N-1) of which the last avail[r] are real."""
        m, V, D = len(hist), self.vocab_size, self.D
        p = np.full((m, V), 1.0 / V)
        for o in range(1, self.n + 1):
            _, first, n_types, total, _, nxt, cnt = self.orders[o]
            i, found = self._contexts(hist, avail, o)
            r = np.flatnonzero(found)
            ci = i[r]
            p[r] *= (D * n_types[ci] / total[ci])[:, None]
            lengths = n_types[ci]
            flat = (
                np.repeat(first[ci], lengths)
                + np.arange(lengths.sum())
                - np.repeat(np.cumsum(lengths) - lengths, lengths)
            )
            rr = np.repeat(r, lengths)
            p[rr, nxt[flat]] += (cnt[flat] - D) / total[ci].repeat(lengths)
        return p.astype(np.float32)

    def prob_of(self, hist: np.ndarray, avail: np.ndarray, w: np.ndarray) -> np.ndarray:
        """p(w[r] | history r) (m,), float64, without building (m, V)."""
        V, D = self.vocab_size, self.D
        p = np.full(len(hist), 1.0 / V)
        for o in range(1, self.n + 1):
            _, _, n_types, total, pair_keys, _, cnt = self.orders[o]
            i, found = self._contexts(hist, avail, o)
            ctx_key = self.orders[o][0][i]
            pk = ctx_key * V + w
            j = np.minimum(np.searchsorted(pair_keys, pk), len(pair_keys) - 1)
            c = np.where(pair_keys[j] == pk, cnt[j], 0.0)
            new = np.maximum(c - D, 0.0) / total[i] + D * n_types[i] / total[i] * p
            p = np.where(found, new, p)
        return p

    def _history(self, tokens: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """History (m, N-1) of tokens[pos-N+2 .. pos] (0 where before the start) and its real length."""
        h = max(self.n - 1, 0)
        idx = pos[:, None] - np.arange(h - 1, -1, -1)
        hist = (
            np.where(idx >= 0, tokens[np.maximum(idx, 0)].astype(np.int64), 0)
            if h
            else np.zeros((len(pos), 0), np.int64)
        )
        return hist, np.minimum(pos + 1, h)

    def stream_probs(self, tokens: np.ndarray, a: int, b: int) -> Iterator[tuple[int, torch.Tensor]]:
        for off, p, inverse in self.stream_unique(tokens, a, b):
            yield off, p[inverse]

    def stream_unique(self, tokens: np.ndarray, a: int, b: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        rows = self.rows_per_chunk()
        for s in range(a, b, rows):
            hist, avail = self._history(tokens, np.arange(s, min(b, s + rows)))
            key = avail.astype(np.int64)  # the prediction is a function of (history, its real length)
            for j in range(hist.shape[1]):
                key = key * self.vocab_size + hist[:, j]
            _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
            p = torch.from_numpy(self.dense(hist[first], avail[first])).to(self.device)
            yield s - a, p, torch.from_numpy(inverse.reshape(-1)).to(self.device)

    @torch.no_grad()
    def next_token_probs(self, windows: torch.Tensor) -> torch.Tensor:
        B, T = windows.shape
        w = windows.cpu().numpy()
        hist, avail = zip(*(self._history(row, np.arange(T)) for row in w))
        p = self.dense(np.concatenate(hist), np.concatenate(avail))
        return torch.from_numpy(p).view(B, T, -1).to(windows.device)

    @torch.no_grad()
    def token_log_probs(self, windows: torch.Tensor) -> torch.Tensor:
        B, T = windows.shape
        w = windows.cpu().numpy()
        hist, avail = zip(*(self._history(row, np.arange(T - 1)) for row in w))
        p = self.prob_of(np.concatenate(hist), np.concatenate(avail), w[:, 1:].reshape(-1))
        return torch.from_numpy(np.log(p)).float().view(B, T - 1).to(windows.device)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "smoothing": f"interpolated Kneser-Ney, D={self.D}"}
