"""Output layers (heads) and their registry.

A head owns the (V, C) output weights and answers two questions:

training    ``draw(sample)`` -> (W, b, KL): the weights of one forward pass, which the objective
            consumes fused with the projection and chunked (``objectives.fused_linear_loss``), so
            no (B, T, V) logits are held; KL(q || p) for a variational head, 0 otherwise.
            ``loss(...)`` runs that draw through the objective; heads with several weight sets
            (an ensemble of heads) override it.
prediction  ``logits(h, samples, generator)`` -> (S, n, V) fp32 logits for hidden states h (n, C):
            S draws of the head. ``samples=0`` asks for the point estimate (S = 1); a
            deterministic head always returns its one set of logits.

``HEADS`` maps a config name to its class; ``@register_head("name")`` adds one. A head is
built with ``Head.from_config(n_embd, vocab_size, cfg, sigmoid)`` from the run's
ObjectiveConfig, so a new head is one class plus its registration.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..common.errors import InputError
from .objectives import fused_linear_loss, local_reparam_loss

if TYPE_CHECKING:
    from .config import ObjectiveConfig
    from .objectives import Objective

HEADS: dict[str, type[Head]] = {}


def register_head(name: str) -> Callable[[type[Head]], type[Head]]:
    """Class decorator: make a head available to configs and variants as ``name``."""

    def add(cls: type[Head]) -> type[Head]:
        cls.name = name
        HEADS[name] = cls
        return cls

    return add


def sigmoid_bias_init(vocab_size: int, sigmoid: bool) -> float:
    """Sigmoid heads start their output bias at -log V, so every initial s(z_v) is about 1/V."""
    return -math.log(vocab_size) if sigmoid else 0.0


class Head(nn.Module):
    """Base class of output layers; see the module docstring for the contract."""

    name: ClassVar[str] = ""
    stochastic: ClassVar[bool] = False  # logits(h, samples > 0) differ between draws

    @classmethod
    def from_config(cls, n_embd: int, vocab_size: int, cfg: ObjectiveConfig, sigmoid: bool) -> Head:
        raise NotImplementedError

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
        """(S, n, V) fp32 logits for h (n, C); deterministic heads: S = 1 whatever ``samples``."""
        w, b = self.weights(sample=False)
        return F.linear(h, w.to(h.dtype), None if b is None else b.to(h.dtype)).float()[None]

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


@register_head("linear")
class LinearHead(Head):
    """z = h W^T (+ b). ``bias_init`` sets the starting bias (sigmoid heads use -log V)."""

    def __init__(self, n_embd: int, vocab_size: int, bias: bool = False, bias_init: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, n_embd))
        self.bias = nn.Parameter(torch.full((vocab_size,), float(bias_init))) if bias else None
        nn.init.normal_(self.weight, mean=0.0, std=0.02)

    @classmethod
    def from_config(cls, n_embd: int, vocab_size: int, cfg: ObjectiveConfig, sigmoid: bool) -> LinearHead:
        return cls(n_embd, vocab_size, bias=cfg.output_bias, bias_init=sigmoid_bias_init(vocab_size, sigmoid))

    @property
    def mean_weight(self) -> nn.Parameter:
        return self.weight

    def weights(self, sample: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.weight, self.bias


@register_head("bayesian")
class BayesianHead(Head):
    """Mean-field Gaussian posterior q(W) = N(mu, softplus(rho)^2) per weight (and bias).

    Training draws one weight sample per forward pass, W = mu + softplus(rho) * eps with
    eps ~ N(0, I) shared by all positions of the micro-batch. This costs a single (N, C) x (C, V)
    matmul, the same as a linear head, whereas local reparameterisation and Flipout need a
    second matmul of the same size.

    KL(q || p) against the prior p = N(prior_mu, prior_sigma^2) is in closed form:
    sum_i log(sigma_p / sigma_i) + (sigma_i^2 + (mu_i - mu_p)^2) / (2 sigma_p^2) - 1/2.

    Prediction draws the logits directly: for a fixed h, z_v = sum_c W_vc h_c + b_v is exactly
    Gaussian with mean mu_v.h + b_v and variance sum_c sigma_vc^2 h_c^2 + sigma_b,v^2, independent
    over v (the rows of W are independent). Drawing z (local reparameterisation) is therefore the
    same per-position distribution as drawing S weight matrices, for two (n, C) x (C, V) matmuls
    and S n V normal numbers instead of S matmuls and S V C normal numbers. The draws of different
    positions are independent: sharing the normal vectors among positions would save their cost
    (2-4 ns each on a CPU, the largest part of a draw), but their errors would then add up along
    a sequence instead of averaging out (sequence-level OOD AUROC of MI 0.940 -> 0.920 on the
    synthetic shift, same run).
    """

    stochastic = True

    def __init__(
        self,
        n_embd: int,
        vocab_size: int,
        bias: bool = False,
        bias_init: float = 0.0,
        prior_mu: float = 0.0,
        prior_sigma: float = 0.02,
        posterior_sigma_init: float = 1e-3,
        reparam: str = "weight",
    ) -> None:
        super().__init__()
        if reparam not in ("weight", "local"):
            raise InputError(f"reparam must be 'weight' or 'local', got {reparam!r}")
        self.reparam = reparam
        self._kept: tuple[torch.Tensor, torch.Tensor | None] | None = None  # see kept_variance
        self._holders = 0
        rho0 = math.log(math.expm1(posterior_sigma_init))  # softplus^-1
        self.weight_mu = nn.Parameter(torch.empty(vocab_size, n_embd))
        self.weight_rho = nn.Parameter(torch.full((vocab_size, n_embd), rho0))
        nn.init.normal_(self.weight_mu, mean=0.0, std=0.02)
        if bias:
            self.bias_mu = nn.Parameter(torch.full((vocab_size,), float(bias_init)))
            self.bias_rho = nn.Parameter(torch.full((vocab_size,), rho0))
        else:
            self.bias_mu = self.bias_rho = None
        self.prior_mu = prior_mu
        self.prior_sigma = prior_sigma

    @classmethod
    def from_config(cls, n_embd: int, vocab_size: int, cfg: ObjectiveConfig, sigmoid: bool) -> BayesianHead:
        return cls(
            n_embd,
            vocab_size,
            bias=cfg.output_bias,
            bias_init=sigmoid_bias_init(vocab_size, sigmoid),
            prior_mu=cfg.prior_mu,
            prior_sigma=cfg.prior_sigma,
            posterior_sigma_init=cfg.posterior_sigma_init,
            reparam=cfg.reparam,
        )

    @property
    def mean_weight(self) -> nn.Parameter:
        return self.weight_mu

    def weights(self, sample: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A posterior draw (``sample=True``) or the posterior mean."""
        if not sample:
            return self.weight_mu, self.bias_mu
        w = self.weight_mu + F.softplus(self.weight_rho) * torch.randn_like(self.weight_mu)
        b = None
        if self.bias_mu is not None:
            b = self.bias_mu + F.softplus(self.bias_rho) * torch.randn_like(self.bias_mu)
        return w, b

    def draw(self, sample: bool = True) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(W, b, KL) for one training forward pass: a posterior draw (or the mean) and KL(q || p).

        Same values as ``weights`` and ``kl``, through one autograd node per tensor with
        closed-form gradients (``_GaussianDraw``) rather than a dozen elementwise ones.
        """
        if not sample:
            return self.weight_mu, self.bias_mu, self.kl()
        w, kl = _GaussianDraw.apply(self.weight_mu, self.weight_rho, self.prior_mu, self.prior_sigma)
        b = None
        if self.bias_mu is not None:
            b, kl_b = _GaussianDraw.apply(self.bias_mu, self.bias_rho, self.prior_mu, self.prior_sigma)
            kl = kl + kl_b
        return w, b, kl

    def loss(self, h, objective, y, sets, chunk_size=0, sample=False):
        """``reparam='local'``: the logits of every position are drawn independently from their exact
        Gaussian given h (local reparameterisation, Kingma et al. 2015): the same expected loss as a
        weight draw, with far less gradient noise on rho, for a second matmul (``local_reparam_loss``)."""
        if not (sample and self.reparam == "local"):
            return super().loss(h, objective, y, sets, chunk_size, sample)

        var = F.softplus(self.weight_rho).square()
        b_var = None if self.bias_rho is None else F.softplus(self.bias_rho).square()
        obj = local_reparam_loss(h, self.weight_mu, var, self.bias_mu, b_var, objective, y, sets, chunk_size)
        return obj, self.kl()

    def kl(self) -> torch.Tensor:
        total = gaussian_kl(self.weight_mu, F.softplus(self.weight_rho), self.prior_mu, self.prior_sigma)
        if self.bias_mu is not None:
            total = total + gaussian_kl(self.bias_mu, F.softplus(self.bias_rho), self.prior_mu, self.prior_sigma)
        return total

    def logit_moments(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of the Gaussian logits z | h, each (n, V) fp32 (class docstring)."""
        h = h.float()
        b_mu = None if self.bias_mu is None else self.bias_mu.float()
        mean = F.linear(h, self.weight_mu.float(), b_mu)
        var = F.linear(h.square(), *self.posterior_variance())
        return mean, var.sqrt()

    def posterior_variance(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """softplus(rho)^2 of the weights (V, C) and bias, fp32 (the one kept by ``kept_variance``)."""
        if self._kept is not None and not (torch.is_grad_enabled() and self.weight_rho.requires_grad):
            return self._kept
        var_b = None if self.bias_rho is None else F.softplus(self.bias_rho.float()).square()
        return F.softplus(self.weight_rho.float()).square(), var_b

    @contextmanager
    def kept_variance(self) -> Iterator[None]:
        """Within the block the posterior variance is computed once: prediction reads it once per
        chunk of rows, and at GPT-2's vocabulary recomputing it cost more than the rest of a draw.
        The weights must not change inside (a version counter cannot tell: fused AdamW does not
        bump it)."""
        if self._holders == 0:
            with torch.no_grad():
                self._kept = self.posterior_variance()
        self._holders += 1  # counted, not nested: two decoders' blocks may end in any order
        try:
            yield
        finally:
            self._holders -= 1
            if self._holders == 0:
                self._kept = None

    def n_draws(self, samples: int) -> int:
        return max(1, samples)

    def logits(self, h: torch.Tensor, samples: int = 0, generator: torch.Generator | None = None) -> torch.Tensor:
        if samples == 0:
            return super().logits(h)
        mean, std = self.logit_moments(h)
        z = torch.empty((samples, *mean.shape), device=mean.device).normal_(generator=generator)
        return z.mul_(std).add_(mean)

    def sequence_sampler(self, rows: int, generator: torch.Generator | None = None) -> RowDraws:
        """One weight draw per row, kept for the row's whole generation (holds rows * V * C floats)."""
        mu, sigma = self.weight_mu.detach().float(), F.softplus(self.weight_rho.detach().float())
        w = mu + sigma * torch.randn((rows, *mu.shape), generator=generator, device=mu.device)
        b = None
        if self.bias_mu is not None:
            b_mu, b_sigma = self.bias_mu.detach().float(), F.softplus(self.bias_rho.detach().float())
            b = b_mu + b_sigma * torch.randn((rows, *b_mu.shape), generator=generator, device=mu.device)
        return RowDraws(w, b)

    def stats(self) -> dict[str, float]:
        s = F.softplus(self.weight_rho.detach().float())
        return {"sigma_mean": s.mean().item(), "sigma_min": s.min().item(), "sigma_max": s.max().item()}


@register_head("ensemble")
class HeadEnsemble(Head):
    """K linear heads on one backbone, each initialised independently; the predictive averages the
    K readouts (a K-member deep ensemble that shares the backbone; Lakshminarayanan et al. 2017).

    Training, ``split`` (the default): position n of the flattened micro-batch trains member
    k = n mod K only, loss = 1/N sum_n objective(h_n W_{k(n)}^T + b_{k(n)}), so the K heads cost one
    head's matmuls, as BatchEnsemble (Wen et al. 2020) splits its batch among members; each member
    sees a different quarter of the data, which also decorrelates them. ``split=False``: every
    member on every position, loss = 1/K sum_k objective(h W_k^T + b_k), K times the head's cost.
    The token embedding, if tied, shares the first member's weights."""

    def __init__(
        self, n_embd: int, vocab_size: int, k: int, bias: bool = False, bias_init: float = 0.0, split: bool = True
    ) -> None:
        super().__init__()
        if k < 1:
            raise InputError(f"ensemble_size must be >= 1, got {k}")
        self.members = nn.ModuleList(LinearHead(n_embd, vocab_size, bias, bias_init) for _ in range(k))
        self.split = split

    @classmethod
    def from_config(cls, n_embd: int, vocab_size: int, cfg: ObjectiveConfig, sigmoid: bool) -> HeadEnsemble:
        return cls(
            n_embd,
            vocab_size,
            cfg.ensemble_size,
            bias=cfg.output_bias,
            bias_init=sigmoid_bias_init(vocab_size, sigmoid),
            split=cfg.ensemble_split,
        )

    @property
    def mean_weight(self) -> nn.Parameter:
        return self.members[0].weight

    def weights(self, sample: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.members[0].weights()

    def loss(self, h, objective, y, sets, chunk_size=0, sample=False):

        K, zero = len(self.members), h.new_zeros((), dtype=torch.float32)
        if not self.split:
            return sum(
                fused_linear_loss(h, m.weight, m.bias, objective, y, sets, chunk_size) for m in self.members
            ) / K, zero
        h2, y2 = h.reshape(-1, h.shape[-1]), y.reshape(-1)
        s2 = None if sets is None else sets.reshape(-1, sets.shape[-1])
        total = zero
        for k, m in enumerate(self.members):  # member k: positions k, k + K, ...; weighted by its positions
            yk = y2[k::K]
            if len(yk):
                part = fused_linear_loss(
                    h2[k::K], m.weight, m.bias, objective, yk, None if s2 is None else s2[k::K], chunk_size
                )
                total = total + part * (yk >= 0).sum()
        return total / (y2 >= 0).sum().clamp(min=1), zero

    def n_draws(self, samples: int) -> int:
        return len(self.members)

    def logits(self, h: torch.Tensor, samples: int = 0, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.cat([m.logits(h) for m in self.members])


class RowDraws:
    """A logit sampler with one fixed weight set per row: z_r = W_r h_r + b_r, (1, rows, V)."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor | None) -> None:
        self.w, self.b = w, b

    def n_draws(self, samples: int) -> int:
        return 1

    def __call__(self, h: torch.Tensor, samples: int = 0, generator: torch.Generator | None = None) -> torch.Tensor:
        z = torch.einsum("bvc,bc->bv", self.w, h.float())
        return (z if self.b is None else z + self.b)[None]


def gaussian_kl(mu: torch.Tensor, sigma: torch.Tensor, prior_mu: float, prior_sigma: float) -> torch.Tensor:
    """sum KL(N(mu, sigma^2) || N(prior_mu, prior_sigma^2)) over all elements, in at least fp32
    (fp64 stays fp64)."""
    dtype = torch.promote_types(mu.dtype, torch.float32)
    mu, sigma = mu.to(dtype), sigma.to(dtype)
    return (
        math.log(prior_sigma)
        - torch.log(sigma)
        + (sigma.square() + (mu - prior_mu).square()) / (2 * prior_sigma**2)
        - 0.5
    ).sum()


class _GaussianDraw(torch.autograd.Function):
    """(w, KL) = (mu + sigma * eps, sum_i KL(N(mu_i, sigma_i^2) || N(mu_p, sigma_p^2))), sigma = softplus(rho).

    Gradients in closed form (KL is a scalar, so g_kl is one number):
      dL/dmu  = g_w + g_kl (mu - mu_p) / sigma_p^2
      dL/drho = (g_w eps + g_kl (sigma / sigma_p^2 - 1 / sigma)) sigmoid(rho)
    Autograd would run about twenty elementwise passes (each a fresh (V, C) allocation) over
    the output layer's weights; this runs thirteen, six of them in the backward pass. At
    GPT-2's shape on a CPU, with few tokens per step, those passes are a large part of the
    Bayesian head's overhead.
    """

    @staticmethod
    def forward(ctx, mu, rho, prior_mu: float, prior_sigma: float):
        sigma = F.softplus(rho)
        d = mu - prior_mu if prior_mu else mu
        acc = torch.promote_types(mu.dtype, torch.float32)
        s32, d32 = sigma.to(acc).reshape(-1), d.to(acc).reshape(-1)
        var_p = prior_sigma**2
        kl = (
            mu.numel() * (math.log(prior_sigma) - 0.5)
            - torch.log(s32).sum()
            + (s32.dot(s32) + d32.dot(d32)) / (2 * var_p)
        )
        eps = torch.randn_like(mu)
        w = torch.addcmul(mu, sigma, eps)
        ctx.save_for_backward(d, rho, sigma, eps)  # d and rho are the parameters themselves when mu_p = 0
        ctx.var_p = var_p
        return w, kl

    @staticmethod
    def backward(ctx, g_w, g_kl):
        d, rho, sigma, eps = ctx.saved_tensors
        g_rho = torch.zeros_like(sigma) if g_w is None else g_w * eps
        g_mu = torch.zeros_like(d) if g_w is None else g_w
        if g_kl is not None:
            g_kl = g_kl.to(sigma.dtype)
            g_mu = torch.addcmul(g_mu, d, g_kl, value=1 / ctx.var_p)
            g_rho.addcmul_(sigma, g_kl, value=1 / ctx.var_p).addcdiv_(g_kl.expand_as(sigma), sigma, value=-1)
        g_rho.mul_(torch.sigmoid(rho))
        return g_mu, g_rho, None, None


def build_head(name: str, n_embd: int, vocab_size: int, cfg: ObjectiveConfig, sigmoid: bool) -> Head:
    """The registered head ``name`` built from the run's objective config."""
    if name not in HEADS:
        raise InputError(f"unknown head {name!r}; known: {', '.join(HEADS)}")
    return HEADS[name].from_config(n_embd, vocab_size, cfg, sigmoid)
