"""The context window of generation: which tokens each row conditions on, and the backbone state
that holds them (``generate.py``'s module docstring states the policy).

``ContextWindow`` keeps, for a batch of rows of any lengths, each row's token history, where
its window starts, and the final hidden state of its last token. Rows join and leave between
steps; a row whose window slides is re-encoded on its own, so the others are not disturbed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..common.errors import InputError
from ..predict.predictive import Predictor


def default_slide(block_size: int) -> int:
    return max(1, block_size // 4)


def window_start(start: int, length: int, block_size: int, keep: int) -> int:
    """Where the context of a sequence of ``length`` tokens begins, given where it began before.

    The context is tokens[start:length]; once it would exceed block_size it restarts with the
    last ``keep`` tokens (see the module docstring).
    """
    return length - keep if length - start > block_size else start


def keep_tokens(block_size: int, slide: int | None) -> int:
    """Tokens kept when the window slides (block_size - slide, at least 1)."""
    slide = default_slide(block_size) if slide is None else slide
    if not 1 <= slide <= block_size:
        raise InputError(f"slide must be in [1, block_size={block_size}], got {slide}")
    return max(1, block_size - slide)


class ContextWindow:
    """Rows of token histories as the backbone sees them, one appended token per row at a time.

    Row r conditions on ``window(r)`` = history[r][starts[r]:], at positions 0, 1, ...: each row
    has its own length and its own window, which slides by the policy. ``hidden`` holds, per
    backbone pass of the predictor, the final hidden state (B, C) of each row's last token,
    from which its next token is predicted. With ``use_cache`` the keys/values live in KV
    caches with one length per row and a step costs one token's forward pass per row; without,
    every row's window is recomputed at each step. Rows join with ``add`` (prefilled apart from
    the others, then merged) and leave with ``select``.
    """

    def __init__(
        self,
        predictor: Predictor,
        tokens: torch.Tensor | Sequence[Sequence[int]] | None = None,
        *,
        use_cache: bool = True,
        slide: int | None = None,
    ) -> None:
        self.predictor, self.device = predictor, predictor.device
        self.block_size = predictor.block_size
        self.keep = keep_tokens(self.block_size, slide)
        self.history: list[list[int]] = []
        self.starts: list[int] = []
        self.caches = predictor.new_caches(0, self.block_size) if use_cache else None
        self.hidden: list[torch.Tensor] = []
        if tokens is not None:
            self.add(tokens.tolist() if isinstance(tokens, torch.Tensor) else tokens)

    def __len__(self) -> int:
        return len(self.history)

    def window(self, row: int) -> list[int]:
        return self.history[row][self.starts[row] :]

    def add(self, prompts: Sequence[Sequence[int]]) -> None:
        """New rows: each prompt's last block_size tokens are encoded (together, apart from the
        rows already here) and the rows join the batch at its end."""
        first = len(self.history)
        for p in prompts:
            self.history.append([int(t) for t in p])
            self.starts.append(max(0, len(p) - self.block_size))
        windows = [self.window(r) for r in range(first, len(self.history))]
        caches = self.predictor.new_caches(len(windows), self.block_size) if self.caches is not None else None
        hidden = self._encode(windows, caches)
        if caches is not None:
            if first == 0:
                self.caches = caches
            else:
                assert self.caches is not None  # new caches are made only when this window keeps caches
                for mine, new in zip(self.caches, caches):
                    mine.extend(new)
        self.hidden = [torch.cat([a, b]) for a, b in zip(self.hidden, hidden)] if first else hidden

    def select(self, rows: list[int]) -> None:
        """Keep only ``rows``, in that order."""
        self.history = [self.history[r] for r in rows]
        self.starts = [self.starts[r] for r in rows]
        index = torch.tensor(rows, dtype=torch.long, device=self.device)
        self.hidden = [h.index_select(0, index) for h in self.hidden]
        for cache in self.caches or []:
            cache.select(rows)

    def append(self, tokens: torch.Tensor) -> None:
        """Add one token per row (B,) and update ``hidden``."""
        slid = []
        for r, t in enumerate(tokens.tolist()):
            self.history[r].append(t)
            start = window_start(self.starts[r], len(self.history[r]), self.block_size, self.keep)
            if start != self.starts[r]:
                self.starts[r] = start
                slid.append(r)
        if self.caches is None or len(slid) == len(self):  # every window recomputed (from position 0)
            for cache in self.caches or []:
                cache.reset()
            self.hidden = self._encode([self.window(r) for r in range(len(self))], self.caches)
            return
        if slid:
            self._restart(slid)
        self.hidden = [h[:, -1] for h in self.predictor.encode(tokens[:, None], self.caches)]

    def _restart(self, rows: list[int]) -> None:
        """Some rows' windows slid: their caches restart from position 0 with the new window but
        its last token, which the step then appends with every other row's."""
        assert self.caches is not None  # append restarts rows only when this window keeps caches
        fresh = self.predictor.new_caches(len(rows), self.block_size)
        if self.keep > 1:
            self._encode([self.window(r)[:-1] for r in rows], fresh)
        for mine, new in zip(self.caches, fresh):
            mine.put(rows, new)

    def _encode(self, windows: list[list[int]], caches: list | None) -> list[torch.Tensor]:
        """The final hidden state of each window's last token, (n, C) per backbone pass. Windows
        of different lengths go right-padded through one pass (causal attention: a row never
        sees its padding), and the (empty) ``caches`` keep each row's real tokens only."""
        n = [len(w) for w in windows]
        T = max(n)
        device = self.device
        x = torch.tensor([w + [0] * (T - len(w)) for w in windows], dtype=torch.long, device=device)
        if min(n) == T:
            return [h[:, -1] for h in self.predictor.encode(x, caches)]
        hs = self.predictor.encode(x, caches, n)
        last = torch.tensor(n, device=device) - 1
        rows = torch.arange(len(n), device=device)
        return [h[rows, last] for h in hs]


def generation_windows(n_tokens: int, block_size: int, slide: int | None = None) -> list[tuple[int, int, int]]:
    """Generation's context policy as (begin, end, score_from) windows over a stream of ``n_tokens``
    (``predictive.score_windows``): target t is predicted from tokens[start(t) : t], where start
    follows ``generate.window_start``; consecutive targets with the same start share a window."""
    keep = keep_tokens(block_size, slide)
    windows: list[list[int]] = []  # [start, end, first target]
    start = 0
    for t in range(1, n_tokens):
        start = window_start(start, t, block_size, keep)
        if windows and windows[-1][0] == start:
            windows[-1][1] = t + 1
        else:
            windows.append([start, t + 1, t])
    return [(w[0], w[1], w[2]) for w in windows]
