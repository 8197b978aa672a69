"""The scoring pass of ``gptv eval``: one pass over a text, reduced to per-token statistics.

Nothing of size (text, V) is held: hidden states are projected one chunk of rows at a time and
reduced to per-token values (the metrics module's contract). Per-token metrics beyond the
built-in ones are registered with ``register_token_metric``: scored here, summarised by their
mean in the eval JSON's ``token_metrics`` and shown in the headline (``result.headline``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import metrics as M
from ..common.errors import InputError
from ..common.progress import Progress
from ..core.model import GPT
from ..data.dataset import TokenDataset
from ..data.sources import Source
from ..predict.predictive import CHUNK_FLOATS, Draws, Predictor, score_windows

EXACT_SUPPORT_THRESHOLD = 0.01  # a token is in the synthetic language's reference set if p_true > this
TAUS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)  # each costs one pass over the chunk's (n, V) values


# ----------------------------------------------------------------------------- registered per-token metrics


@dataclass(frozen=True)
class TokenMetric:
    """A per-token metric of the predictive distribution: ``fn(draws, y)`` -> (n,) values for targets
    y (n,); the eval reports their mean, under ``header`` in tables, formatted with ``fmt``."""

    name: str
    fn: Callable[[Draws, torch.Tensor], torch.Tensor]
    header: str
    fmt: str = "{:.4f}"


TOKEN_METRICS: dict[str, TokenMetric] = {}


def register_token_metric(name: str, header: str | None = None, fmt: str = "{:.4f}"):
    """Decorator: score ``fn(draws, y)`` on every token of every eval, as metric ``name``."""

    def add(fn: Callable[[Draws, torch.Tensor], torch.Tensor]) -> Callable[[Draws, torch.Tensor], torch.Tensor]:
        if name in TOKEN_METRICS:
            raise ValueError(f"token metric {name!r} is already registered")
        TOKEN_METRICS[name] = TokenMetric(name, fn, header or name, fmt)
        return fn

    return add


def metric_column(name: str) -> str:
    """The per-token column of a registered metric (prefixed: it never collides with a built-in statistic)."""
    return f"metric_{name}"


# ----------------------------------------------------------------------------- reference sets


def open_reference_sets(data: TokenDataset, name: str, split: str, n_tokens: int) -> np.memmap:
    sets_dir = data.dir / "targets" / name
    if not (sets_dir / "meta.json").is_file():
        raise FileNotFoundError(
            f"no reference sets {sets_dir}; build them with `gptv targets --data {data.dir} --teacher SPEC`"
        )
    sets = data.open_sets(sets_dir, split)
    if len(sets) != n_tokens:
        raise InputError(f"{sets_dir}: {len(sets)} rows for a {split} split of {n_tokens} tokens")
    return sets


def _as_reference(rows: np.ndarray) -> torch.Tensor:
    """Cached set rows (n, K) with the dtype-max sentinel -> int64 ids padded with -1."""
    ids = torch.from_numpy(rows.astype(np.int64))
    ids[torch.from_numpy(rows == np.iinfo(rows.dtype).max)] = -1
    return ids


def exact_support(p_true: torch.Tensor, threshold: float = EXACT_SUPPORT_THRESHOLD) -> torch.Tensor:
    """{v : p_true[v] > threshold} per row as ids (n, K) padded with -1 (K = largest set)."""
    k = max(int((p_true > threshold).sum(1).max()), 1)
    values, ids = p_true.topk(k, dim=1)
    return ids.masked_fill(values <= threshold, -1)


def reference_sets(source: Source, sets: str | None, model: GPT, cfg) -> tuple[Any, str | None, Any, str]:
    """(reference memmap or None, its description, the run's own training sets or None, why skipped)."""
    data, n = source.data, len(source.tokens)
    reference, described, skipped = None, None, "--sets none"
    if data is None:
        if sets not in (None, "none"):
            raise InputError("--sets needs a prepared data folder (--data); an external --text has no reference sets")
        skipped = "external text: no reference sets"
    elif sets is not None and sets != "none":
        assert source.split is not None  # a data folder's source is one of its splits
        reference, described = open_reference_sets(data, sets, source.split, n), f"targets/{sets}"
    elif sets is None and source.truth is not None:
        described = f"exact support p_true > {EXACT_SUPPORT_THRESHOLD}"
    elif sets is None and model.objective.sigmoid:
        raise InputError(
            f"set metrics of the sigmoid head need reference sets, and {data.dir} is not the synthetic language: "
            f"build them with `gptv targets --data {data.dir} --teacher ngram:3` (or ckpt:RUN) and pass --sets NAME, "
            "or pass --sets none to skip them"
        )
    elif sets is None:
        skipped = "no reference sets (pass --sets NAME)"
    train_sets = None
    if data is not None and model.objective.sigmoid and cfg.objective.targets:
        assert source.split is not None  # a data folder's source is one of its splits
        try:
            train_sets = open_reference_sets(data, cfg.objective.targets, source.split, n)
        except (FileNotFoundError, ValueError):  # trained on other data: score BCE on the true token only
            train_sets = None
    return reference, described, train_sets, skipped


# ----------------------------------------------------------------------------- scoring


class Rows:
    """Hands out consecutive rows of a chunked (start, rows) iterator, n at a time."""

    def __init__(self, chunks: Iterator[tuple[int, np.ndarray]]) -> None:
        self.chunks, self.buffer = chunks, np.empty((0, 0), dtype=np.float32)

    def take(self, n: int) -> torch.Tensor:
        parts, need = [], n
        while need:
            if len(self.buffer) == 0:
                self.buffer = next(self.chunks)[1]
            parts.append(self.buffer[:need])
            need -= len(parts[-1])
            self.buffer = self.buffer[len(parts[-1]) :]
        return torch.from_numpy(np.concatenate(parts))


class _Columns:
    """Per-token values by name, written in order into one (n,) tensor per name allocated once.
    Kept as one small tensor per chunk, they pinned glibc's heap between the chunks' large
    transient (S, rows, V) buffers, so it grew with the text: 4.9 GB against 0.6 GB for 2,048
    tokens at V = 50257 with 4 draws, and out of memory at 8,192."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.data: dict[str, torch.Tensor] = {}
        self.filled: dict[str, int] = {}

    def append(self, name: str, values: torch.Tensor) -> None:
        if name not in self.data:
            self.data[name] = torch.empty(self.n, dtype=values.dtype, device=values.device)
            self.filled[name] = 0
        i = self.filled[name]
        self.data[name][i : i + len(values)] = values
        self.filled[name] = i + len(values)

    def arrays(self) -> dict[str, np.ndarray] | None:
        return {k: v[: self.filled[k]].cpu().numpy() for k, v in self.data.items()} if self.data else None


class _SetCounts:
    """Per-token set counts at ``tau`` and pooled counts over TAUS, against reference sets."""

    def __init__(self, tau: float) -> None:
        self.tau = tau
        self.tp: torch.Tensor | None = None
        self.pred: torch.Tensor | None = None

    def add(self, per_token: _Columns, probs: torch.Tensor, ref: torch.Tensor) -> None:
        tp, n_pred, n_ref = M.set_counts(probs, ref, self.tau)
        per_token.append("set_tp", tp)
        per_token.append("set_n_pred", n_pred)
        per_token.append("set_n_ref", n_ref)
        ctp, cpred, _ = M.set_curve(probs, ref, TAUS)
        ctp, cpred = ctp.sum(1), cpred.sum(1)
        self.tp = ctp if self.tp is None else self.tp + ctp
        self.pred = cpred if self.pred is None else self.pred + cpred

    def curve(self) -> tuple[np.ndarray, np.ndarray] | None:
        if self.tp is None or self.pred is None:
            return None
        return self.tp.cpu().numpy(), self.pred.cpu().numpy()


@torch.no_grad()
def score(
    predictor: Predictor | GPT,
    tokens: np.ndarray,
    *,
    stride: int,
    truth=None,
    reference: np.memmap | None = None,
    train_sets: np.memmap | None = None,
    tau: float = 0.5,
    batch: int = 16,
    point: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """One pass over ``tokens`` (targets 1..n-1 in order): per-token statistics and set counts.

    predictor: the run's predictive distribution (a bare GPT means its default predictor).
    truth: a SyntheticLanguage (exact p_true for ground-truth metrics and, without
    ``reference``, the exact-support reference sets). reference / train_sets: cached set
    memmaps aligned with ``tokens`` (row i = candidates for token i+1), the first for set
    metrics, the second for the sigmoid head's raw BCE as trained. point: also score the
    heads' point estimates (posterior mean) when the predictor draws from a head posterior.
    progress: a bar in a terminal, plain lines in a log (``progress.Progress``).
    Returns {"tokens": {name: (n-1,) array} of the predictive distribution (``Draws.token_stats``,
    ``Draws.logit_stats``, the first member's feature density scores when fitted, plus truth_* and
    set_* counts when available), "point": the same for the point estimate or
    None, "curve": (tp, n_pred) summed per tau of TAUS or None, "raw_bce_sum": summed BCE
    (sigmoid heads, a single model)}.
    """
    predictor = predictor if isinstance(predictor, Predictor) else Predictor([predictor], seed=0)
    acc = _Pass(predictor, len(tokens), point, tau, train_sets)
    rows_true = Rows(truth.iter_next_token_probs(tokens[:-1])) if truth is not None else None
    want_sets = reference is not None or truth is not None
    windows = M.sliding_windows(len(tokens), predictor.block_size, stride)
    budget = CHUNK_FLOATS // 2  # the draws' log-probabilities and their probabilities
    bar = Progress(progress, len(tokens) - 1, desc="gptv eval: scoring", unit="token")
    scored = score_windows(
        predictor, tokens, windows, batch=batch, set_probs=want_sets, budget=budget, logit_stats=True
    )
    for t, y, draws in scored:
        bar.update(len(y))
        p_true = rows_true.take(len(y)).to(y.device) if rows_true is not None else None
        acc.add(t, y, draws, p_true)
        if want_sets:
            rows = reference[t - 1 : t - 1 + len(y)] if reference is not None else None
            if rows is not None:
                ref = _as_reference(rows)
            else:
                assert p_true is not None  # without reference sets, want_sets means the truth is known
                ref = exact_support(p_true)
            assert draws.set_probs is not None  # asked for (set_probs=want_sets)
            acc.sets.add(acc.per_token, draws.set_probs, ref.to(y.device))
    bar.close()
    return {
        "tokens": acc.per_token.arrays() or {},
        "point": acc.point_tokens.arrays(),
        "curve": acc.sets.curve(),
        "raw_bce_sum": acc.raw_bce,
        "train_sets_used": train_sets is not None,
    }


class _Pass:
    """What one scoring pass accumulates: per-token columns of the predictive distribution (and of
    the point estimate), set counts, and the sigmoid head's summed raw BCE."""

    def __init__(self, predictor: Predictor, n_tokens: int, point: bool, tau: float, train_sets) -> None:
        self.single = len(predictor.members) == 1 and not predictor.dropout_samples
        self.model, self.train_sets = predictor.model, train_sets
        self.point_of = None
        if point and self.single and predictor.n_draws > 1 and predictor.samples != 0:
            self.point_of = Predictor(predictor.members, samples=0)
        self.per_token, self.point_tokens = _Columns(max(0, n_tokens - 1)), _Columns(max(0, n_tokens - 1))
        self.sets, self.raw_bce = _SetCounts(tau), 0.0
        density = predictor.members[0].density  # scored on the first backbone pass's features
        self.density = density.to(predictor.device) if density is not None else None

    def add(self, t: int, y: torch.Tensor, draws: Draws, p_true: torch.Tensor | None) -> None:
        """The statistics of the targets ``y`` of tokens t..t+n-1 (``p_true``: their exact distribution)."""
        n, model = len(y), self.model
        stats = draws.token_stats(y)
        if draws.samples == 1:
            stats.pop("expected_entropy"), stats.pop("mutual_information")
        assert draws.hidden is not None  # score_windows keeps every window's hidden states
        stats.update(draws.logit_stats)
        if self.density is not None:
            stats.update(self.density.scores(draws.hidden[0]))
        for k, v in stats.items():
            self.per_token.append(k, v)
        for m in TOKEN_METRICS.values():
            self.per_token.append(metric_column(m.name), m.fn(draws, y))
        if self.point_of is not None:
            for k, v in M.token_stats(self.point_of.draws(draws.hidden).probs, y).items():
                self.point_tokens.append(k, v)
        if self.single and model.objective.sigmoid:
            sets = self.train_sets
            s = _as_reference(sets[t - 1 : t - 1 + n]).to(y.device) if sets is not None else None
            self.raw_bce += model.head.loss(draws.hidden[0], model.objective, y, s)[0].item() * n
        if p_true is not None:
            for k, v in M.calibration_vs_truth(draws.probs, p_true).items():
                self.per_token.append(f"truth_{k}", v)
            self.per_token.append("truth_entropy", M.entropy(p_true))
            self.per_token.append("truth_nll", -p_true.gather(1, y[:, None]).squeeze(1).clamp_min(1e-30).log())
