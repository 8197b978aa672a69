"""Uncertainty methods: how the predictive distribution of one run, or of several, is formed.

A method turns loaded runs into a ``predictive.Predictor`` (``METHODS``, ``@register_method``);
``prediction.Prediction`` names the method, its draws and the rest, and ``build_predictor`` is
the one way in. Every method reads ``mc_samples`` the same way: None = the run's mc_samples,
0 = the point estimate (a Bayesian head's posterior mean, no dropout, the trained weights).

    default     the runs' own heads: a Bayesian head's mc_samples posterior draws of the logits
                at every position (one backbone pass), one draw otherwise
    sequence    a Bayesian head's weights drawn once per generated sequence and kept for its
                whole generation (generation only)
    mc_dropout  MC dropout (Gal & Ghahramani 2016): mc_samples backbone passes with dropout
                active, for runs trained with dropout > 0
    laplace     last-layer Laplace (Daxberger et al. 2021): a Gaussian around the trained output
                weights with the loss curvature as precision, fitted by ``gptv laplace``
                (``laplace.py``); mc_samples draws of the logits
    snapshot    a snapshot ensemble (Huang et al. 2017): the run's kept checkpoints
                (``keep_checkpoints``), each a member of the mixture

Two compositions apply to every method:
    ensembles   several runs (``--ckpt A,B,C``, or a folder of run folders), averaged in
                probability (Lakshminarayanan et al. 2017): each run is a member of the mixture
    temperature a run's logits divided by the T that ``gptv calibrate`` fitted for that method
                (Guo et al. 2017), stored in RUN/calibration.json and used unless disabled
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import torch

from ..common.errors import InputError
from ..core.config import Config
from ..core.model import GPT
from ..data.tokenizers import META_FILE
from ..store.checkpoint import CheckpointError, checkpoints, load_run, load_weights, verify_checkpoint
from ..store.run import RunFolder
from .density import FeatureDensity
from .laplace import LaplacePosterior
from .options import METHOD_SPECS
from .predictive import Member, Predictor, run_mc_samples

POINT = "point"  # the temperature key of a stochastic head's point estimate


@dataclass
class Run:
    """A loaded run folder (``dir`` None: a bare model, with no folder, temperature or checkpoints)."""

    dir: Path | None
    model: GPT  # eval mode
    config: Config | None = None
    casts: dict[str, GPT] = field(default_factory=dict, repr=False, compare=False)  # prediction.cast_run

    @property
    def folder(self) -> Path:
        """The run folder; InputError for a bare model, which has none."""
        if self.dir is None:
            raise InputError("this needs a run folder; a bare model has none (load one with gptvariants.load(RUN))")
        return self.dir

    @property
    def saved_config(self) -> Config:
        """The run's saved config; InputError for a bare model, which has none."""
        if self.config is None:
            raise InputError(
                "this needs a run's saved config; a bare model has none (load one with gptvariants.load(RUN))"
            )
        return self.config

    @cached_property
    def density(self) -> FeatureDensity | None:
        """The feature density ``gptv density`` stored with the run (None: none, or a bare model)."""
        return None if self.dir is None else FeatureDensity.load(self.dir, RunFolder(self.dir).step)

    def temperature(self, key: str) -> float:
        """The temperature ``gptv calibrate`` fitted for ``key`` (a method name, or POINT), else 1."""
        return 1.0 if self.dir is None else RunFolder(self.dir).temperature(key)


def run_folders(spec: str | Path | Sequence[str | Path]) -> list[Path]:
    """The run folders of ``spec``: one folder, a comma-separated list, a list, or a folder
    whose sub-folders are runs (an ensemble folder)."""
    if isinstance(spec, (list, tuple)):
        parts = [Path(p) for p in spec]
    else:
        parts = [Path(p.strip()) for p in str(spec).split(",") if p.strip()]
    if not parts:
        raise InputError("no run folder given")
    out: list[Path] = []
    for p in parts:
        if p.is_dir() and not RunFolder.is_run(p):
            members = [r.path for r in RunFolder.find(p)]
            out.extend(members or [p])  # no members: let load_run say what is missing
        else:
            out.append(p)
    return out


def load_runs(spec: str | Path | Sequence[str | Path], device: str | torch.device = "cpu") -> list[Run]:
    """Load every run of ``spec`` (``run_folders``); an ensemble's runs must share the tokenizer."""
    runs = []
    for folder in run_folders(spec):
        model, cfg = load_run(folder, device)
        runs.append(Run(folder, model, cfg))
    first = runs[0]
    for r in runs[1:]:
        if _tokenizer_of(r.folder) != _tokenizer_of(first.folder):
            raise InputError(
                f"{r.dir} and {first.dir} were trained with different tokenizers: they cannot be "
                "averaged token by token"
            )
    return runs


def _tokenizer_of(run: Path) -> str:
    path = run / META_FILE
    return path.read_text(encoding="utf-8") if path.is_file() else ""


def point_key(runs: Sequence[Run]) -> str:
    """The temperature key of the runs' point estimate (0 draws): POINT when a head is stochastic."""
    return POINT if any(r.model.head.stochastic for r in runs) else Default.name


class Method:
    """Forms the predictive distribution of loaded runs (module docstring).

    ``predictor`` gets ``mc_samples`` > 0 or None (the run's); ``build_predictor`` turns 0 into
    the point estimate for every method. ``generation_only``: its draws are made per generated
    sequence, so it cannot score text."""

    name: ClassVar[str] = ""

    @property
    def description(self) -> str:
        return METHOD_SPECS[self.name].description

    @property
    def generation_only(self) -> bool:
        return METHOD_SPECS[self.name].generation_only

    def check(self, runs: Sequence[Run]) -> None:
        """Raise ValueError when the method does not apply to these runs."""

    def members(self, runs: Sequence[Run], temperature: bool, key: str) -> list[Member]:
        return [Member(r.model, r.temperature(key) if temperature else 1.0, density=r.density) for r in runs]

    def predictor(self, runs: Sequence[Run], mc_samples: int | None, seed: int | None, temperature: bool) -> Predictor:
        """The predictor of ``runs``, which ``check`` accepted (``prediction.build_predictor`` checks first)."""
        return Predictor(self.members(runs, temperature, self.name), samples=mc_samples, seed=seed)


METHODS: dict[str, Method] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make an uncertainty method available as ``cls.name`` (listed, with its
    description, in ``options.METHOD_SPECS``)."""
    if cls.name not in METHOD_SPECS:
        raise ValueError(f"method {cls.name!r} ({cls.__name__}) is not listed in predict/options.py METHOD_SPECS")
    METHODS[cls.name] = cls()
    return cls


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise InputError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]


def point_predictor(runs: Sequence[Run], seed: int | None, temperature: bool) -> Predictor:
    """Every head's point estimate (0 draws), under the runs' point temperature."""
    return Predictor(Default().members(runs, temperature, point_key(runs)), samples=0, seed=seed)


@register_method
class Default(Method):
    name = "default"


class RowWeights:
    """The ``sequence`` method's logit sampler for a batch whose rows come and go: one weight
    draw per row (``Head.sequence_sampler``), drawn from the row's own generator when it joins
    (``decode.Decoder``) and kept for its whole generation."""

    random = False  # the draws are made when rows join, not per call

    def __init__(self, head) -> None:
        self.head = head
        self.rows: list = []

    def n_draws(self, samples: int) -> int:
        return 1

    def add(self, generators: list[torch.Generator]) -> None:
        self.rows.extend(self.head.sequence_sampler(1, g) for g in generators)

    def select(self, rows: list[int]) -> None:
        self.rows = [self.rows[r] for r in rows]

    def __call__(self, h: torch.Tensor, samples: int = 0, generator=None) -> torch.Tensor:
        return torch.cat([draw(h[j : j + 1]) for j, draw in enumerate(self.rows)], dim=1)


@register_method
class PerSequence(Method):
    name = "sequence"

    def check(self, runs):
        for r in runs:
            if not r.model.head.stochastic:
                raise InputError(
                    f"method 'sequence' draws a Bayesian head's weights; {r.dir or 'this model'} has a "
                    "deterministic head (use the default method)"
                )

    def predictor(self, runs, mc_samples, seed, temperature):
        predictor = Predictor(self.members(runs, temperature, self.name), samples=1, seed=seed)
        for m in predictor.members:
            m.sampler = RowWeights(m.model.head)
        return predictor


@register_method
class MCDropout(Method):
    name = "mc_dropout"

    def check(self, runs):
        for r in runs:
            if (r.config.model if r.config is not None else r.model.config).dropout <= 0:
                raise InputError(
                    f"MC dropout needs a run trained with dropout > 0; {r.dir or 'this model'} has dropout = 0 "
                    "(train one with --dropout=0.1, or the variant baseline-dropout)"
                )

    def predictor(self, runs, mc_samples, seed, temperature):
        """Backbone passes: ``mc_samples``, else the first run's mc_samples."""
        passes = mc_samples if mc_samples is not None else run_mc_samples(runs[0].model)
        return Predictor(self.members(runs, temperature, self.name), samples=0, dropout_samples=passes, seed=seed)


@register_method
class LaplaceMethod(Method):
    name = "laplace"

    def check(self, runs):
        for r in runs:
            if r.dir is None:
                raise InputError("method 'laplace' reads the posterior `gptv laplace` fitted in a run folder")
            LaplacePosterior.check_fitted(r.dir)

    def members(self, runs, temperature, key):
        out = super().members(runs, temperature, key)
        for m, r in zip(out, runs):
            m.sampler = LaplacePosterior.load(r.dir, device=next(r.model.parameters()).device).sampler(r.model)
        return out


@register_method
class Snapshot(Method):
    name = "snapshot"

    def check(self, runs):
        for r in runs:
            kept = len(checkpoints(r.dir)) if r.dir is not None else 0
            if kept < 2:
                raise InputError(
                    f"a snapshot ensemble needs at least 2 kept checkpoints; {r.dir or 'this model'} has {kept} "
                    "(train with --keep_checkpoints=N, N >= 2)"
                )

    def members(self, runs, temperature, key):
        """One member per kept checkpoint of each run, loaded beside the run's own model."""
        out = []
        for r in runs:
            t = r.temperature(key) if temperature else 1.0
            device = next(r.model.parameters()).device
            for _, ckpt in checkpoints(r.dir):
                problems = verify_checkpoint(ckpt, ("model.safetensors",))
                if problems:
                    raise CheckpointError(f"snapshot {ckpt} is unusable ({', '.join(problems)})")
                model = GPT(r.config.model, r.config.objective)
                load_weights(ckpt, model)
                out.append(Member(model.to(device).eval(), t))
        return out
