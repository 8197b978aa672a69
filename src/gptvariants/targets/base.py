"""The teacher interface: a next-token predictor over the data's vocabulary, and its spec strings."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ..common.errors import InputError

TOKENS_PER_FORWARD = 16384  # default teacher batch: this many tokens of windows per forward
ALTERNATIVES = "use `ckpt:RUN` (a gptvariants run folder) or `ngram:N` (fitted on this data's train split) instead"


class Teacher:
    """A next-token predictor over the data's vocabulary.

    ``next_token_probs(windows)`` maps int64 windows (B, T) on ``device`` to float32 probs
    (B, T, V) where [b, t] = p(next | windows[b, :t+1]) seeing only the window.
    ``stream_probs(tokens, a, b)`` yields (offset, probs (m, V)) for positions a..b-1 of a
    whole split, with the best context the teacher can use; it is a pure function of
    (tokens, a, b), which is what makes an interrupted build resume byte-identically.
    """

    spec: str = ""
    vocab_size: int = 0
    device: torch.device = torch.device("cpu")

    def next_token_probs(self, windows: torch.Tensor) -> torch.Tensor:
        raise InputError(
            f"teacher {self.spec!r} cannot score arbitrary windows (online use and the perplexity filter need it)"
        )

    def token_log_probs(self, windows: torch.Tensor) -> torch.Tensor:
        """(B, T-1) log p(windows[:, t+1] | windows[:, :t+1])."""
        p = self.next_token_probs(windows)[:, :-1]
        return p.gather(2, windows[:, 1:, None]).squeeze(2).clamp_min(1e-30).log()

    def stream_probs(self, tokens: np.ndarray, a: int, b: int) -> Iterator[tuple[int, torch.Tensor]]:
        raise NotImplementedError

    def stream_unique(
        self, tokens: np.ndarray, a: int, b: int
    ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor | None]]:
        """``stream_probs`` as (offset, distinct rows (u, V), row of each position (m,) or None for
        the identity): teachers whose prediction depends on a short context compute it once per
        distinct context, and set selection then works on distinct rows only."""
        for off, p in self.stream_probs(tokens, a, b):
            yield off, p, None

    def info(self) -> dict[str, Any]:
        return {"spec": self.spec, "vocab_size": self.vocab_size}

    def rows_per_chunk(self) -> int:
        """Rows of (rows, V) float32 probabilities held at once: ~32 MiB (256 MiB on GPU)."""
        budget = 2**26 if self.device.type == "cuda" else 2**23
        return max(1, budget // self.vocab_size)


class WindowedTeacher(Teacher):
    """A causal LM with a fixed context: ``hidden`` (B, T) -> (B, T, C), ``probs_from_hidden`` (m, C) -> (m, V).

    Over a stream it runs windows of ``context`` tokens with stride S = context // 2: the
    first window predicts its every position, each later one only its last S positions, so
    every prediction after the first window sees at least context - S >= context / 2 tokens.
    """

    context: int = 0
    batch_size: int = 1

    def hidden(self, windows: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def probs_from_hidden(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def softmax_logits(self, h: torch.Tensor) -> torch.Tensor | None:
        """Logits z (m, V) with probs_from_hidden(h) = softmax(z), or None for another readout."""
        return None

    def top_from_hidden(self, h: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(probs, ids) of the k most probable tokens per row, sorted. A softmax teacher ranks
        by logits and normalises only the k it keeps, skipping the (m, V) exp and division."""
        z = self.softmax_logits(h)
        if z is None:
            return self.probs_from_hidden(h).topk(k, dim=-1)
        top, ids = z.topk(k, dim=-1)
        return (top - torch.logsumexp(z, dim=-1, keepdim=True)).exp_(), ids

    @torch.no_grad()
    def next_token_probs(self, windows: torch.Tensor) -> torch.Tensor:
        if windows.shape[1] > self.context:
            raise InputError(f"windows of {windows.shape[1]} tokens exceed the teacher's context of {self.context}")
        h = self.hidden(windows)
        return self.probs_from_hidden(h.reshape(-1, h.shape[-1])).view(*windows.shape, -1)

    @torch.no_grad()
    def stream_probs(self, tokens: np.ndarray, a: int, b: int) -> Iterator[tuple[int, torch.Tensor]]:
        n, L = len(tokens), min(self.context, len(tokens))
        S = max(1, L // 2)
        pos = np.arange(a, b)
        start = np.where(pos < L, 0, ((pos - L) // S + 1) * S)
        start = np.minimum(start, n - L)  # windows at the end shift left: more context, same length
        starts, which = np.unique(start, return_inverse=True)
        rows = self.rows_per_chunk()
        hs = []
        for i in range(0, len(starts), self.batch_size):
            idx = starts[i : i + self.batch_size, None] + np.arange(L)
            w = torch.from_numpy(tokens[idx].astype(np.int64)).to(self.device)
            hs.append(self.hidden(w))
        h = torch.cat(hs)  # (n_windows, L, C): hidden states are small next to (L, V) logits
        hr = h[torch.from_numpy(which).to(self.device), torch.from_numpy(pos - start).to(self.device)]
        for s in range(0, len(hr), rows):
            yield s, self.probs_from_hidden(hr[s : s + rows])


def parse_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """'kind:arg?key=value&key=value' -> (kind, arg, options)."""
    body, _, query = spec.partition("?")
    kind, _, arg = body.partition(":")
    opts = dict(kv.partition("=")[::2] for kv in query.split("&") if kv)
    return kind, arg, opts
