"""The heads' and objectives' names, facts and hyper-parameters, without their torch code.

This is what the config, the variants and the command line need before torch loads (``gptv --help``,
a bad ``--key=value``). Each component's own keys are a ``Config`` dataclass of ``keys.key`` fields
(torchtitan's component-config pattern): flat config keys, unique across components, gathered under
``[objective]`` by config.py. The classes themselves (heads/, objectives.py) take their ``Config``
from here, and their registries refuse a class that is not listed here or disagrees with its
entry (``check_registered``); a test checks that the names known before torch loads are the
registries' names. A component listed nowhere (registered at run time, by a plugin) is added on
registration; the built-in ones are listed here so that configs know their keys without torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..common.checks import Bool, Choice, Float, Int
from .keys import BIG, key


@dataclass
class NoKeys:
    """A component without hyper-parameters of its own."""


@dataclass
class BayesianConfig:
    """``heads.BayesianHead``: the prior, the posterior's start and its training noise."""

    prior_mu: float = key(0.0, Float(), "mean of the prior N(prior_mu, prior_sigma^2) on every weight")
    prior_sigma: float = key(0.02, Float(0.0, lo_open=True), "standard deviation of the prior on every weight")
    posterior_sigma_init: float = key(1e-3, Float(0.0, lo_open=True), "initial posterior standard deviation")
    # training noise: 'weight' (one weight draw per forward pass, one matmul) or 'local'
    # (local reparameterisation: independent logit noise per position, two matmuls, lower variance)
    reparam: str = key(
        "weight",
        Choice(("weight", "local")),
        "weight: one weight draw per forward pass | local: independent logit noise per position",
    )
    rho_lr_mult: float = key(1.0, Float(0.0, lo_open=True), "learning-rate multiplier of rho")


@dataclass
class EnsembleConfig:
    """``heads.HeadEnsemble``: K output heads on one backbone."""

    ensemble_size: int = key(4, Int(1, 1024), "K output heads")
    ensemble_split: bool = key(True, Bool(), "each position trains one member (one head's cost), else all K")


@dataclass
class SmoothConfig:
    """``objectives.SmoothedCrossEntropy``."""

    label_smoothing: float = key(0.1, Float(0.0, 1.0, hi_open=True), "eps of label smoothing")


@dataclass
class SigmoidBCEConfig:
    """``objectives.SigmoidBCE``."""

    pos_weight: float = key(1.0, Float(0.0, lo_open=True), "w, the weight of positive (set) terms")
    sum_penalty: float = key(0.0, Float(0.0), "lambda, the penalty on the sigmoid sum's distance from 1")
    set_draws: int = key(0, Int(0, BIG), "m of the readout; 0 = from the sets, set by training")


@dataclass(frozen=True)
class ComponentSpec:
    """A registered head or objective as the config sees it: its name, its keys and its facts."""

    name: str
    Config: type = NoKeys
    stochastic: bool = False  # a head whose logits differ between draws (it has a posterior to sample)
    sigmoid: bool = False  # an objective that reads out with sigmoids and trains on sets


def _table(*specs: ComponentSpec) -> dict[str, ComponentSpec]:
    return {s.name: s for s in specs}


# registration order is the order configs, `gptv variants` and errors list them in
HEAD_SPECS: dict[str, ComponentSpec] = _table(
    ComponentSpec("linear"),
    ComponentSpec("bayesian", BayesianConfig, stochastic=True),
    ComponentSpec("ensemble", EnsembleConfig),
)
OBJECTIVE_SPECS: dict[str, ComponentSpec] = _table(
    ComponentSpec("ce"),
    ComponentSpec("smooth", SmoothConfig),
    ComponentSpec("bce", SigmoidBCEConfig, sigmoid=True),
    ComponentSpec("entmax"),
    ComponentSpec("sparsemax"),
)


def check_registered(specs: dict[str, ComponentSpec], name: str, cls: Any) -> None:
    """Registering ``cls`` as ``name``: it must agree with its entry in ``specs``; a component listed
    nowhere (registered at run time, by a plugin) is added, and configs know it from then on."""
    facts = ComponentSpec(name, cls.Config, getattr(cls, "stochastic", False), getattr(cls, "sigmoid", False))
    spec = specs.setdefault(name, facts)
    if spec != facts:
        raise ValueError(f"{cls.__name__} registered as {name!r} disagrees with core/components.py: {facts} != {spec}")
