"""The head contract, its registry and the shapes and samplers every head shares.

A head owns the (V, C) output weights and answers two questions:

training    ``draw(sample)`` -> (W, b, KL): the weights of one forward pass, which the objective
            consumes fused with the projection and chunked (``objectives.fused_linear_loss``), so
            no (B, T, V) logits are held; KL(q || p) for a variational head, 0 otherwise.
            ``loss(...)`` runs that draw through the objective; heads with several weight sets
            (an ensemble of heads) override it.
prediction  ``logits(h, samples, generator)`` -> (S, n, V) fp32 logits for hidden states h (n, C):
            S draws of the head. ``samples=0`` asks for the point estimate (S = 1); a
            deterministic head always returns its one set of logits.

and owns its other facts: its hyper-parameters (``Config``, a dataclass of ``keys.key`` fields in
components.py, where configs read it without torch; flat config keys unique across components),
its parameter count before allocation (``num_parameters``), optimizer groups of its own
(``optimizer_groups``), its Hugging Face output layer or the reason there is none
(``export_layer``), and one draw per generated sequence (``sequence_sampler``).

``HEADS`` maps a config name to its class; ``@register_head("name")`` adds one. A head is
built with ``Head.from_config(spec, cfg)`` from the shape every head shares (``HeadSpec``) and
its own Config, so a new head is one class plus its registration.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...common.errors import InputError
from ..components import HEAD_SPECS, NoKeys, check_registered
from ..objectives import fused_linear_loss

if TYPE_CHECKING:
    from ..objectives import Objective

HEADS: dict[str, type[Head]] = {}


def register_head(name: str) -> Callable[[type[Head]], type[Head]]:
    """Class decorator: make a head available to configs and variants as ``name``."""

    def add(cls: type[Head]) -> type[Head]:
        check_registered(HEAD_SPECS, name, cls)
        cls.name = name
        HEADS[name] = cls
        return cls

    return add


def sigmoid_bias_init(vocab_size: int, sigmoid: bool) -> float:
    """Sigmoid heads start their output bias at -log V, so every initial s(z_v) is about 1/V."""
    return -math.log(vocab_size) if sigmoid else 0.0


@dataclass(frozen=True)
class HeadSpec:
    """What the model tells every head: its shape, whether it has an output bias (``output_bias``),
    and whether the objective reads out with sigmoids (the bias then starts at -log V)."""

    n_embd: int
    vocab_size: int
    bias: bool = False
    sigmoid: bool = False

    @property
    def bias_init(self) -> float:
        return sigmoid_bias_init(self.vocab_size, self.sigmoid)


class ExportRefused(Exception):
    """The head has no Hugging Face output layer that reproduces its prediction; the message says why."""


class Head(nn.Module):
    """Base class of output layers; see the module docstring for the contract."""

    name: ClassVar[str] = ""
    stochastic: ClassVar[bool] = False  # logits(h, samples > 0) differ between draws

    Config: ClassVar[type] = NoKeys  # the head's own hyper-parameters (a components.py dataclass): none here

    @classmethod
    def from_config(cls, spec: HeadSpec, cfg: Any) -> Head:
        """The head of shape ``spec`` with the hyper-parameters ``cfg`` (an instance of ``cls.Config``)."""
        raise NotImplementedError

    @classmethod
    def num_parameters(cls, spec: HeadSpec, cfg: Any) -> int:
        """Parameters of ``from_config(spec, cfg)``, the (V, C) mean weight included, without allocating.

        This default builds the head on the meta device; a head may state the closed form."""
        with torch.device("meta"):
            return sum(p.numel() for p in cls.from_config(spec, cfg).parameters())

    def optimizer_groups(self) -> list[dict[str, Any]]:
        """AdamW groups for those of the head's parameters that need settings of their own: dicts of
        ``params`` and ``weight_decay``, optionally ``lr_mult`` (scales the schedule's learning rate).
        The parameters not listed follow the model's rule (decay on matrices only)."""
        return []

    def export_layer(self) -> tuple[torch.Tensor, torch.Tensor | None, str]:
        """(W (V, C), b (V,) or None, note): the GPT-2 lm_head whose logits h W^T + b are this head's
        ``logits(h, 0)``, and what they stand for ('' when exact). Raises ExportRefused with the reason
        when no single linear layer reproduces the head's prediction."""
        if self.stochastic:
            raise ExportRefused(f"the {self.name} head is stochastic and states no point estimate to export")
        w, b = self.weights(sample=False)
        return w, b, ""

    def sequence_sampler(self, rows: int, generator: torch.Generator | None = None) -> Callable[..., torch.Tensor]:
        """A logit sampler with one draw of the head per row, kept for the row's whole generation:
        ``sampler(h (rows, C))`` -> (1, rows, V). A deterministic head has one weight set, so this
        default returns its point-estimate logits; a stochastic head must override it."""
        if self.stochastic:
            raise NotImplementedError(f"the {self.name} head does not define one draw per sequence")
        return PointLogits(self)

    @property
    def mean_weight(self) -> nn.Parameter:
        """The (V, C) weight that the token embedding shares when weights are tied."""
        raise NotImplementedError

    def weights(self, sample: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(W, b): a draw (``sample``) or the point estimate."""
        raise NotImplementedError

    def draw(self, sample: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(W, b, KL) for one training forward pass; a deterministic head has KL = 0."""
        w, b = self.weights(sample)
        return w, b, w.new_zeros(())

    def loss(
        self,
        h: torch.Tensor,
        objective: Objective,
        y: torch.Tensor,
        sets: torch.Tensor | None,
        chunk_size: int = 0,
        sample: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean objective over positions with y >= 0, KL) of one training forward pass."""

        w, b, kl = self.draw(sample)
        return fused_linear_loss(h, w, b, objective, y, sets, chunk_size), kl

    def logits(self, h: torch.Tensor, samples: int = 0, generator: torch.Generator | None = None) -> torch.Tensor:
        """(S, n, V) fp32 logits for h (n, C); deterministic heads: S = 1 whatever ``samples``. The
        product runs in the weights' dtype: a bf16 backbone before an fp32 head gets fp32 logits,
        not logits rounded to bf16 (whose ties flip greedy decoding); autocast casts both alike."""
        w, b = self.weights(sample=False)
        return F.linear(h.to(w.dtype), w, b).float()[None]

    def n_draws(self, samples: int) -> int:
        """S of ``logits(h, samples)``."""
        return 1

    def kept_variance(self) -> AbstractContextManager[None]:
        """A block in which the weights do not change, so a head may keep what it derives from them
        (``BayesianHead``); nothing to keep here."""
        return nullcontext()

    def stats(self) -> dict[str, float]:
        """Scalars worth logging during training (posterior widths of a variational head)."""
        return {}


class PointLogits:
    """The logit sampler of a deterministic head's sequences: its one set of logits, (1, rows, V)."""

    def __init__(self, head: Head) -> None:
        self.head = head

    def n_draws(self, samples: int) -> int:
        return 1

    def __call__(self, h: torch.Tensor, samples: int = 0, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.head.logits(h)


class RowDraws:
    """A logit sampler with one fixed weight set per row: z_r = W_r h_r + b_r, (1, rows, V)."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor | None) -> None:
        self.w, self.b = w, b

    def n_draws(self, samples: int) -> int:
        return 1

    def __call__(self, h: torch.Tensor, samples: int = 0, generator: torch.Generator | None = None) -> torch.Tensor:
        z = torch.einsum("bvc,bc->bv", self.w, h.float())
        return (z if self.b is None else z + self.b)[None]


def build_head(name: str, spec: HeadSpec, cfg: Any) -> Head:
    """The registered head ``name`` of shape ``spec`` with its hyper-parameters ``cfg``."""
    if name not in HEADS:
        raise InputError(f"unknown head {name!r}; known: {', '.join(HEADS)}")
    return HEADS[name].from_config(spec, cfg)
