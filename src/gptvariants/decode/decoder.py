"""Continuous batching: rows of any prompt lengths and sampling options decoded as one batch.

A ``Decoder`` advances every row by one token per ``step``: one forward pass for the batch (each
row at its own positions, ``window.ContextWindow``), one predictive for the batch
(``predictive.Predictor.draws``), then each row's token chosen by its own options from its own
random stream (``generate.py``'s module docstring gives the steps). Rows join (``add``) and leave
(when they end, or ``Row.cancel``) between steps without changing what the other rows compute:
a row's tokens depend on its prompt, its options and its seed, not on the rows beside it (up to
float rounding; except MC dropout, whose masks are drawn over the batch).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..common.errors import InputError
from ..predict.methods import RowWeights
from ..predict.predictive import Draws, Predictor
from .filters import apply_repetition_penalty, conformal_filter, draw_rows, restrict_to_sets, sampling_probs
from .options import SIG_MODES
from .window import ContextWindow


@dataclass
class Generation:
    """One row's output: the new tokens (the prompt and a stop token are not included) and, per
    token when details were asked for, the model's probability of it (and its log), the
    predictive entropy (nats), the mutual information (nats; None with a single draw), and with
    ``top_n``: the ``top_n`` most probable tokens as (id, prob), a sigmoid head's set
    {v : sigmoid(z_v) > tau} (draw-averaged), and the chosen token's probability under each
    draw. ``finish_reason``: 'length', 'stop_token', 'stop_fn' or 'cancelled'."""

    tokens: list[int] = field(default_factory=list)
    prob: list[float] = field(default_factory=list)
    logprob: list[float] = field(default_factory=list)
    entropy: list[float] = field(default_factory=list)
    mi: list[float] | None = None
    top: list[list[tuple[int, float]]] | None = None
    sets: list[list[int]] | None = None
    draws: list[list[float]] | None = None
    finish_reason: str = "length"


def check_sampling(
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    repetition_penalty: float,
    sig_mode: str,
    tau: float,
    max_new_tokens: int,
    top_n: int,
) -> None:
    if not math.isfinite(temperature):
        raise InputError(f"temperature must be finite (<= 0 means greedy), got {temperature}")
    if max_new_tokens < 0 or isinstance(max_new_tokens, bool) or int(max_new_tokens) != max_new_tokens:
        raise InputError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if top_k is not None and top_k < 1:
        raise InputError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise InputError(f"top_p must be in (0, 1], got {top_p}")
    if not (math.isfinite(repetition_penalty) and repetition_penalty > 0):
        raise InputError(f"repetition_penalty must be finite and > 0, got {repetition_penalty}")
    if sig_mode not in SIG_MODES:
        raise InputError(f"sig_mode must be one of {SIG_MODES}, got {sig_mode!r}")
    if not 0.0 <= tau <= 1.0:
        raise InputError(f"tau must be in [0, 1], got {tau}")
    if top_n < 0:
        raise InputError(f"top_n must be >= 0, got {top_n}")


def check_prompt(ids: Sequence[int], vocab_size: int, name: str = "prompt") -> None:
    if not ids:
        raise InputError(f"{name} is empty: start it with an end-of-text (or any) token")
    if min(ids) < 0 or max(ids) >= vocab_size:
        raise InputError(f"{name} has token ids outside [0, {vocab_size})")


@dataclass
class RowOptions:
    """How one row is sampled, what is recorded and when it ends (checked on creation: ValueError).

    greedy, or temperature <= 0: argmax decoding. top_k / top_p: filters (None = off).
    repetition_penalty: CTRL penalty on tokens present in the prompt or generated so far.
    sig_mode ('normalize' | 'set') and tau: sigmoid heads only. conformal_p: keep only the tokens
    of p >= conformal_p (a conformal LAC set's 1 - q, ``filters.conformal_filter``). details: record each token's
    probability, entropy and MI; top_n > 0 also its alternatives, set and per-draw probabilities.
    stop_tokens: ids that end the row (not recorded). stop_fn(tokens): called after each new
    token; True ends the row. seed: the row's own random stream (None: a random one).
    """

    max_new_tokens: int
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    greedy: bool = False
    sig_mode: str = "normalize"
    tau: float = 0.5
    conformal_p: float | None = None
    details: bool = False
    top_n: int = 0
    stop_tokens: frozenset[int] = frozenset()
    stop_fn: Callable[[list[int]], bool] | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        check_sampling(
            self.temperature,
            self.top_k,
            self.top_p,
            self.repetition_penalty,
            self.sig_mode,
            self.tau,
            self.max_new_tokens,
            self.top_n,
        )
        if self.conformal_p is not None and not 0.0 <= self.conformal_p <= 1.0:
            raise InputError(f"conformal_p must be in [0, 1], got {self.conformal_p}")
        self.greedy = bool(self.greedy or self.temperature <= 0)
        self.details = bool(self.details or self.top_n > 0)
        self.stop_tokens = frozenset(int(t) for t in self.stop_tokens)


class Row:
    """One prompt in a ``Decoder``: its options, its random stream and its output so far (``gen``).
    ``done`` once it has ended (``gen.finish_reason`` says why); ``cancel`` (from any thread)
    ends it at the decoder's next step."""

    def __init__(self, prompt: Sequence[int], options: RowOptions) -> None:
        self.prompt = [int(t) for t in prompt]
        self.options = options
        self.gen = Generation()
        self.generator: torch.Generator | None = None  # seeded when the row is added, on the model's device
        self.done = False
        self.cancelled = False

    @property
    def rng(self) -> torch.Generator:
        """The row's generator, seeded when the row joined a decoder (rows draw only after that)."""
        assert self.generator is not None, "a row draws only after it joined a decoder"
        return self.generator

    def cancel(self) -> None:
        self.cancelled = True

    def finish(self, reason: str) -> None:
        self.gen.finish_reason = reason
        self.done = True


def _column(values: list, device: torch.device, off=None):
    """One option of the rows: their common value, or a (B, 1) tensor of per-row values (None -> ``off``)."""
    if not values or all(v == values[0] for v in values):
        return values[0] if values else None
    return torch.tensor([off if v is None else v for v in values], device=device)[:, None]


@dataclass
class _BatchOptions:
    """The options of a decoder's rows, each a common value or a (B, 1) tensor (``_column``),
    rebuilt when rows join or leave. Sampling options cover the ``sampled`` rows only."""

    penalty: float | torch.Tensor
    set_rows: bool | torch.Tensor
    tau: float | torch.Tensor
    sampled: list[int]
    temperature: float | torch.Tensor | None
    top_k: int | torch.Tensor | None
    top_p: float | torch.Tensor | None
    conformal_p: float | torch.Tensor | None
    details: bool
    top_n: int
    want_sets: bool

    @classmethod
    def of(cls, rows: list[Row], predictor: Predictor, device: torch.device) -> _BatchOptions:
        opts = [r.options for r in rows]
        sampled = [j for j, o in enumerate(opts) if not o.greedy]
        picked = [opts[j] for j in sampled]
        set_rows = _column([predictor.sigmoid and o.sig_mode == "set" for o in opts], device)
        top_n = max(o.top_n for o in opts)
        return cls(
            penalty=_column([float(o.repetition_penalty) for o in opts], device),
            set_rows=set_rows,
            tau=_column([float(o.tau) for o in opts], device),
            sampled=sampled,
            temperature=_column([float(o.temperature) for o in picked], device),
            top_k=_column([o.top_k for o in picked], device, off=predictor.vocab_size),
            top_p=_column([o.top_p for o in picked], device, off=1.0),
            conformal_p=_column([o.conformal_p for o in opts], device, off=0.0),
            details=any(o.details for o in opts),
            top_n=top_n,
            want_sets=predictor.sigmoid and (set_rows is not False or top_n > 0),
        )


class Decoder:
    """A running batch of rows (module docstring). ``add`` queues a row; each ``step`` feeds every
    row its last token, lets the queued rows join (their prompts encoded apart from the batch),
    then chooses one token per row. One thread steps a decoder; ``Row.cancel`` may come from any.
    ``use_cache`` / ``slide``: as ``window.ContextWindow``."""

    def __init__(self, predictor: Predictor, *, use_cache: bool = True, slide: int | None = None) -> None:
        self.predictor, self.device = predictor, predictor.device
        self.window = ContextWindow(predictor, use_cache=use_cache, slide=slide)
        self.rows: list[Row] = []  # the window's rows, in its order
        self.joining: list[Row] = []
        self.chosen: torch.Tensor | None = None  # each row's last token, not fed to the window yet
        self.present = torch.zeros(0, predictor.vocab_size, dtype=torch.bool, device=self.device)
        self.options: _BatchOptions | None = None
        self.row_weights = [m.sampler for m in predictor.members if isinstance(m.sampler, RowWeights)]

    @property
    def active(self) -> bool:
        """Rows are decoding or waiting to join."""
        return bool(self.rows or self.joining)

    def add(self, row: Row) -> Row:
        """Queue ``row`` (ValueError for a prompt the model cannot read); it joins at the next step."""
        check_prompt(row.prompt, self.predictor.vocab_size)
        o, many = row.options, self.predictor.n_draws > 1
        seed = o.seed if o.seed is not None else int(torch.randint(2**62, (1,)))
        row.generator = torch.Generator(device=self.device).manual_seed(seed)
        full = o.top_n > 0
        row.gen = Generation(
            mi=[] if many and o.details else None,
            top=[] if full else None,
            sets=[] if full and self.predictor.sigmoid else None,
            draws=[] if full and many else None,
        )
        if o.max_new_tokens == 0:
            row.finish("length")
        else:
            self.joining.append(row)
        return row

    def step(self) -> list[Row]:
        """Advance every row by one token; returns the rows that received one or ended."""
        self._leave()
        self._feed()
        if not self.rows:
            return []
        o = self.options
        assert o is not None  # set whenever there are rows
        draws = self.predictor.draws(self.window.hidden, set_probs=o.want_sets, generators=[r.rng for r in self.rows])
        chosen = self._choose(draws)
        if isinstance(o.penalty, torch.Tensor) or o.penalty != 1.0:  # only penalised rows read it
            self.present[torch.arange(len(chosen), device=chosen.device), chosen] = True
        details = self._details(draws, chosen) if o.details else None
        touched = list(self.rows)
        for j, (row, token) in enumerate(zip(touched, chosen.tolist())):
            self._record(row, token, details, j)
        self.chosen = chosen
        self._leave()
        return touched

    def _feed(self) -> None:
        """The last step's tokens into the window, then the queued rows into the batch."""
        if self.chosen is not None and self.rows:
            self.window.append(self.chosen)
        self.chosen = None
        joining, self.joining = self.joining, []
        for r in joining:
            if r.cancelled:
                r.finish("cancelled")
        joining = [r for r in joining if not r.done]
        if not joining:
            return
        self.window.add([r.prompt for r in joining])
        self.rows += joining
        present = torch.zeros(len(joining), self.predictor.vocab_size, dtype=torch.bool, device=self.present.device)
        for j, r in enumerate(joining):  # the whole prompt, not just the part that fits the window
            present[j, r.prompt] = True
        self.present = torch.cat([self.present, present])
        for w in self.row_weights:
            w.add([r.rng for r in joining])
        self.options = _BatchOptions.of(self.rows, self.predictor, self.device)

    def _leave(self) -> None:
        """Drop the rows that ended or were cancelled, with their state."""
        keep = [j for j, r in enumerate(self.rows) if not (r.done or r.cancelled)]
        if len(keep) == len(self.rows):
            return
        for r in self.rows:
            if r.cancelled and not r.done:
                r.finish("cancelled")
        self.rows = [self.rows[j] for j in keep]
        self.window.select(keep)
        index = torch.tensor(keep, dtype=torch.long, device=self.present.device)
        self.present = self.present.index_select(0, index)
        if self.chosen is not None:
            self.chosen = self.chosen.index_select(0, index)
        for w in self.row_weights:
            w.select(keep)
        self.options = _BatchOptions.of(self.rows, self.predictor, self.device) if self.rows else None

    def _choose(self, draws: Draws) -> torch.Tensor:
        """Each row's next token: greedy rows take the argmax, the others draw from their own
        generator (``generate.py``'s module docstring, steps 2-4)."""
        o = self.options
        assert o is not None  # set whenever there are rows
        scores = apply_repetition_penalty(draws.scores, self.present, o.penalty)
        if o.set_rows is not False:
            assert draws.set_probs is not None  # asked for (want_sets) whenever a row restricts to sets
            scores = restrict_to_sets(scores, draws.set_probs, o.tau, o.set_rows)
        if o.conformal_p is not None:
            scores = conformal_filter(scores, draws.probs, o.conformal_p)
        if not o.sampled:
            return scores.argmax(-1)
        assert o.temperature is not None  # set whenever some row samples
        probs = sampling_probs(
            scores[o.sampled] if len(o.sampled) < len(self.rows) else scores, o.temperature, o.top_k, o.top_p
        )
        drawn = draw_rows(probs, [self.rows[j].rng for j in o.sampled])
        if len(o.sampled) == len(self.rows):
            return drawn
        index = torch.tensor(o.sampled, dtype=torch.long, device=drawn.device)
        return scores.argmax(-1).index_copy(0, index, drawn)

    def _details(self, draws: Draws, chosen: torch.Tensor) -> dict[str, list]:
        """The predictive's account of each row's chosen token (``Generation``), as one list per field."""
        o = self.options
        assert o is not None  # set whenever there are rows
        cols = {"logprob": draws.logprob(chosen).tolist(), "entropy": draws.entropy().tolist()}
        if draws.samples > 1:
            cols["mi"] = draws.mutual_information().tolist()
        if o.top_n:
            p_top, i_top = draws.probs.topk(min(o.top_n, draws.log_p.shape[-1]), dim=-1)
            cols["top"] = [list(zip(i, p)) for i, p in zip(i_top.tolist(), p_top.tolist())]
            if draws.samples > 1:
                per_draw = draws.log_ps.gather(-1, chosen[None, :, None].expand(draws.samples, -1, 1)).squeeze(-1)
                cols["draws"] = per_draw.exp().t().tolist()
            if draws.set_probs is not None:
                cols["sets"] = [
                    torch.nonzero(s > r.options.tau).squeeze(1).tolist() if r.options.top_n else None
                    for s, r in zip(draws.set_probs, self.rows)
                ]
        return cols

    @staticmethod
    def _record(row: Row, token: int, details: dict[str, list] | None, j: int) -> None:
        """Row j's token and, when it asked for them, its details; ends the row when it should."""
        o, g = row.options, row.gen
        if token in o.stop_tokens:
            row.finish("stop_token")
            return
        g.tokens.append(token)
        if details is not None and o.details:
            g.logprob.append(details["logprob"][j])
            g.prob.append(math.exp(details["logprob"][j]))
            g.entropy.append(details["entropy"][j])
            for key in ("mi", "sets", "draws"):
                if getattr(g, key) is not None:
                    getattr(g, key).append(details[key][j])
            if g.top is not None:
                g.top.append(details["top"][j][: o.top_n])
        if o.stop_fn is not None and o.stop_fn(g.tokens):
            row.finish("stop_fn")
        elif len(g.tokens) >= o.max_new_tokens:
            row.finish("length")
