"""The variant registry: each variant is a head, an objective and a few default hyper-parameters.

Adding a variant is adding one ``Variant(...)`` line here; the model and the training loop
are shared by all of them.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from ..common.errors import InputError
from .components import HEAD_SPECS, OBJECTIVE_SPECS


@dataclass(frozen=True)
class Variant:
    name: str
    head: str  # a heads.HEADS name (components.HEAD_SPECS)
    objective: str  # an objectives.OBJECTIVES name (components.OBJECTIVE_SPECS)
    equation: str  # the training loss per position, for docs and `gptv variants`
    defaults: dict[str, Any] = field(default_factory=dict)
    group: str = "study"  # 'study': the 2024 study's variants (the experiment's default); 'comparator', 'sparse'

    @property
    def sigmoid(self) -> bool:
        """The objective reads out with sigmoids and trains on sets (it takes targets/teachers)."""

        return OBJECTIVE_SPECS[self.objective].sigmoid

    @property
    def bayesian(self) -> bool:
        """The head has a posterior to sample."""

        return HEAD_SPECS[self.head].stochastic


def register_variant(variant: Variant) -> Variant:
    """Add a variant to the registry (its head and objective must be registered)."""

    if variant.head not in HEAD_SPECS or variant.objective not in OBJECTIVE_SPECS:
        raise ValueError(f"variant {variant.name!r}: unknown head {variant.head!r} or objective {variant.objective!r}")
    REGISTRY[variant.name] = variant
    return variant


# Sigmoid heads get an output bias started at -log V so every initial sigmoid output is ~1/V.
_SIG = {"output_bias": True}
# A posterior that learns within a run (measured in benchmarks/README.md, "Bayesian head"): logit noise
# drawn per position (local reparameterisation) so rho's gradient is not drowned by one shared draw,
# sigma starting at half the GPT-2 init scale, rho moving 10x faster than the weights, and a prior
# N(0, 0.1^2) wide enough for trained output weights (the study's 0.02 shrinks the tied embedding).
_BAYES = {"reparam": "local", "posterior_sigma_init": 0.01, "prior_sigma": 0.1, "rho_lr_mult": 10.0}

REGISTRY: dict[str, Variant] = {
    v.name: v
    for v in [
        Variant("baseline", "linear", "ce", "-log softmax(z)_y"),
        Variant(
            "smooth",
            "linear",
            "smooth",
            "-(1-eps) log p_y - eps/(V-1) sum_{v!=y} log p_v, p = softmax(z)",
            {"label_smoothing": 0.1},
        ),
        Variant("bayes", "bayesian", "ce", "-log softmax(z_w)_y + beta KL(q(w) || p(w)) / N, w ~ q", _BAYES),
        Variant("sig", "linear", "bce", "-sum_{v in P} log s(z_v) - sum_{v not in P} log(1 - s(z_v))", _SIG),
        Variant("sig-reg", "linear", "bce", "BCE + lambda (sum_v s(z_v) - 1)^2", {**_SIG, "sum_penalty": 1.0}),
        Variant(
            "sig-pw",
            "linear",
            "bce",
            "-w sum_{v in P} log s(z_v) - sum_{v not in P} log(1 - s(z_v))",
            {**_SIG, "pos_weight": 5.0},
        ),
        Variant("bayes-sig", "bayesian", "bce", "BCE(z_w) + beta KL(q(w) || p(w)) / N, w ~ q", {**_SIG, **_BAYES}),
        # comparators of the uncertainty study: MC dropout needs dropout in training; K heads, one backbone
        Variant(
            "baseline-dropout",
            "linear",
            "ce",
            "-log softmax(z)_y, dropout 0.1 (for MC dropout)",
            {"dropout": 0.1},
            "comparator",
        ),
        Variant(
            "ensemble",
            "ensemble",
            "ce",
            "1/N sum_n -log softmax(z_{k(n)})_y, position n trains head k(n) = n mod K",
            {"ensemble_size": 4, "tie_weights": False},
            "comparator",
        ),
        # a sparse output layer: its support is a set (entmax_alpha=2 gives sparsemax)
        Variant("entmax", "linear", "entmax", "<entmax15(z) - e_y, z> + H_1.5(entmax15(z))", {}, "sparse"),
    ]
}


def study_variants() -> list[str]:
    """The 2024 study's variants, in registry order (the experiment's default set)."""
    return [name for name, v in REGISTRY.items() if v.group == "study"]


def get_variant(name: str) -> Variant:
    if name not in REGISTRY:
        close = difflib.get_close_matches(name, list(REGISTRY), n=2)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise InputError(f"unknown variant {name!r}{hint}; known variants: {', '.join(REGISTRY)}")
    return REGISTRY[name]
