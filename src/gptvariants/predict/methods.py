"""Uncertainty methods: how the predictive distribution of one run, or of several, is formed.

A method turns loaded runs into a ``predictive.Predictor`` (``METHODS``, ``@register_method``):

    default     the runs' own heads: a Bayesian head's posterior draws (mc_samples), one draw
                otherwise
    mc_dropout  MC dropout (Gal & Ghahramani 2016): S backbone passes with dropout active, for
                runs trained with dropout > 0
    laplace     last-layer Laplace (Daxberger et al. 2021): a Gaussian around the trained output
                weights with the loss curvature as precision, fitted by ``gptv laplace``
                (``laplace.py``); S draws of the logits

Two compositions apply to every method:
    ensembles   several runs (``--ckpt A,B,C``, or a folder of run folders), averaged in
                probability (Lakshminarayanan et al. 2017): each run is a member of the mixture
    temperature a run's logits divided by the T that ``gptv calibrate`` fitted for that method
                (Guo et al. 2017), stored in RUN/calibration.json and used unless disabled
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from ..core.config import Config
from ..data.tokenizers import META_FILE
from ..store.checkpoint import load_run
from ..store.run import CALIBRATION_FILE as CALIBRATION_FILE  # calibration.py writes it
from ..store.run import RunFolder
from .laplace import LaplacePosterior
from .predictive import Member, Predictor

POINT = "point"  # the temperature key of a stochastic head's point estimate


@dataclass
class Run:
    """A loaded run folder."""

    dir: Path
    model: torch.nn.Module  # GPT, eval mode
    config: Config

    def temperature(self, key: str) -> float:
        """The temperature ``gptv calibrate`` fitted for ``key`` (a method name, or POINT), else 1."""
        return RunFolder(self.dir).temperature(key)


def run_folders(spec: str | Path | Sequence[str | Path]) -> list[Path]:
    """The run folders of ``spec``: one folder, a comma-separated list, a list, or a folder
    whose sub-folders are runs (an ensemble folder)."""
    if isinstance(spec, (list, tuple)):
        parts = [Path(p) for p in spec]
    else:
        parts = [Path(p.strip()) for p in str(spec).split(",") if p.strip()]
    if not parts:
        raise ValueError("no run folder given")
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
        if _tokenizer_of(r.dir) != _tokenizer_of(first.dir):
            raise ValueError(
                f"{r.dir} and {first.dir} were trained with different tokenizers: they cannot be "
                "averaged token by token"
            )
    return runs


def _tokenizer_of(run: Path) -> str:

    path = run / META_FILE
    return path.read_text(encoding="utf-8") if path.is_file() else ""


class Method:
    """Forms the predictive distribution of loaded runs (module docstring)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def check(self, runs: Sequence[Run]) -> None:
        """Raise ValueError when the method does not apply to these runs."""

    def members(self, runs: Sequence[Run], temperature: bool, key: str) -> list[Member]:
        return [Member(r.model, r.temperature(key) if temperature else 1.0) for r in runs]

    def predictor(
        self, runs: Sequence[Run], *, samples: int | None = None, seed: int | None = None, temperature: bool = True
    ) -> Predictor:
        raise NotImplementedError


METHODS: dict[str, Method] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make an uncertainty method available as ``cls.name``."""
    METHODS[cls.name] = cls()
    return cls


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]


@register_method
class Default(Method):
    name = "default"
    description = "the heads' own draws (Bayesian: mc_samples posterior draws; others: one)"

    def predictor(self, runs, *, samples=None, seed=None, temperature=True):
        point = samples == 0 and any(r.model.head.stochastic for r in runs)
        return Predictor(self.members(runs, temperature, POINT if point else self.name), samples=samples, seed=seed)


@register_method
class MCDropout(Method):
    name = "mc_dropout"
    description = "S backbone passes with dropout active (runs trained with dropout > 0)"
    default_samples = 8

    def check(self, runs):
        for r in runs:
            if r.config.model.dropout <= 0:
                raise ValueError(
                    f"MC dropout needs a run trained with dropout > 0; {r.dir} has dropout = 0 "
                    "(train one with --dropout=0.1, or the variant baseline-dropout)"
                )

    def predictor(self, runs, *, samples=None, seed=None, temperature=True):
        self.check(runs)
        return Predictor(
            self.members(runs, temperature, self.name),
            samples=0,
            dropout_samples=samples or self.default_samples,
            seed=seed,
        )


@register_method
class LaplaceMethod(Method):
    name = "laplace"
    description = "last-layer Laplace posterior fitted by `gptv laplace` (KFAC or diagonal GGN)"

    def check(self, runs):

        for r in runs:
            LaplacePosterior.check_fitted(r.dir)

    def members(self, runs, temperature, key):

        out = super().members(runs, temperature, key)
        for m, r in zip(out, runs):
            m.sampler = LaplacePosterior.load(r.dir, device=next(r.model.parameters()).device).sampler(r.model)
        return out

    def predictor(self, runs, *, samples=None, seed=None, temperature=True):
        self.check(runs)
        return Predictor(self.members(runs, temperature, self.name), samples=samples, seed=seed)


def build_predictor(
    runs: Sequence[Run],
    method: str = "default",
    *,
    samples: int | None = None,
    seed: int | None = None,
    temperature: bool = True,
) -> Predictor:
    """The predictive distribution of ``runs`` under ``method`` (fitted temperatures unless disabled)."""
    return get_method(method).predictor(runs, samples=samples, seed=seed, temperature=temperature)
