"""Online teacher sets: a function from a training batch's windows to their sets (config key ``teacher``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from ..common.checks import Float, Int
from ..common.errors import InputError
from ..data.dataset import TokenDataset
from .base import Teacher, WindowedTeacher, parse_spec
from .selection import ORACLE_MIN_PROB, _check_rule, _keep, readout_draws, sample_set
from .teachers import load_teacher


def build_online_teacher(spec: str, data: TokenDataset, device: torch.device) -> OnlineSets:
    """The online sets of ``spec``: a function x (B, T) int64 -> sets (B, T, K) int64, -1 padded,
    aligned with y = x shifted by one.

    spec is a teacher spec with an optional query: `ckpt:RUN?k=50`, `ngram:3?k=20&top_p=0.9`,
    `hf:gpt2?k=50&min_prob=0.001`, `ckpt:RUN?select=sample&k=8`; keys k (default 50, capped
    at V), select (top | sample, as in ``build_targets``), top_p, min_prob, ratio (fraction of
    positions given a teacher set). Random choices come from torch's global RNG, which the
    training loop seeds per step. The teacher sees only the window x, so [b, t] are its
    candidates for the token after x[b, :t+1], i.e. y[b, t]. The true token is not included:
    the objective adds y itself. Runs under torch.no_grad on `device`.
    """
    kind, _, opts = parse_spec(spec)
    known = {"k", "select", "top_p", "min_prob", "ratio"}
    if set(opts) - known:
        raise InputError(f"unknown teacher option(s) {sorted(set(opts) - known)} in {spec!r}; known: {sorted(known)}")
    rule = opts.get("select", "top")
    k = _option(spec, opts, "k", Int(1), 50)
    top_p = _option(spec, opts, "top_p", Float(0.0, 1.0, lo_open=True), None)
    oracle_default = ORACLE_MIN_PROB if kind == "oracle" and rule == "top" else 0.0
    min_prob = _option(spec, opts, "min_prob", Float(0.0, 1.0), oracle_default)
    ratio = _option(spec, opts, "ratio", Float(0.0, 1.0), 1.0)
    _check_rule(rule, top_p, min_prob, ratio, None)
    teacher = load_teacher(spec.partition("?")[0], data, device)
    return OnlineSets(teacher, rule, min(k, teacher.vocab_size), top_p, min_prob, ratio)


class OnlineSets:
    """x (B, T) -> the teacher's sets (B, T, k); ``set_draws`` is what the sigmoid readout inverts."""

    def __init__(self, teacher: Teacher, rule: str, k: int, top_p: float | None, min_prob: float, ratio: float) -> None:
        self.teacher, self.rule, self.k = teacher, rule, k
        self.top_p, self.min_prob, self.ratio = top_p, min_prob, ratio
        self.set_draws = readout_draws(rule, k)
        self.windowed = teacher if isinstance(teacher, WindowedTeacher) else None

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        B, T = x.shape
        teacher, k = self.teacher, self.k
        out = torch.full((B * T, k), -1, dtype=torch.int64, device=teacher.device)
        for s, rows in _window_rows(teacher, x.to(teacher.device)):
            windowed = self.windowed
            if self.rule == "top":
                p, ids = windowed.top_from_hidden(rows, k) if windowed is not None else rows.topk(k, dim=-1)
                keep = _keep(p, self.top_p, self.min_prob)
            else:
                ids, _, keep = sample_set(windowed.probs_from_hidden(rows) if windowed is not None else rows, k - 1)
            out[s : s + len(ids), : ids.shape[1]] = torch.where(keep, ids, -1)
        if self.ratio < 1.0:
            out[torch.rand(B * T).to(out.device) >= self.ratio] = -1
        return out.view(B, T, k).to(x.device)


def _option(spec: str, opts: dict[str, str], name: str, check: Callable[[str], Any], default: Any) -> Any:
    if name not in opts:
        return default
    try:
        return check(opts[name])
    except ValueError as e:
        raise InputError(f"teacher option {name} in {spec!r}: {e}") from None


def _window_rows(teacher: Teacher, x: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    """(row offset, rows) over the B*T positions of x, a bounded chunk at a time: hidden states
    (n, C) for a WindowedTeacher, next-token probabilities (n, V) for any other."""
    if isinstance(teacher, WindowedTeacher):
        if x.shape[1] > teacher.context:
            raise InputError(f"windows of {x.shape[1]} tokens exceed the teacher's context of {teacher.context}")
        h = teacher.hidden(x)
        h = h.reshape(-1, h.shape[-1])
        rows = teacher.rows_per_chunk()
        for s in range(0, len(h), rows):
            yield s, h[s : s + rows]
    else:
        yield 0, teacher.next_token_probs(x).reshape(x.numel(), -1)
