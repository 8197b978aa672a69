"""The Bayesian head: a mean-field Gaussian posterior over the output weights."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...common.errors import InputError
from ..components import BayesianConfig
from ..gaussian import GaussianDraw, gaussian_kl
from ..objectives import local_reparam_loss
from .base import Head, HeadSpec, RowDraws, register_head


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

    Config = BayesianConfig

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
        rho_lr_mult: float = 1.0,
    ) -> None:
        super().__init__()
        if reparam not in ("weight", "local"):
            raise InputError(f"reparam must be 'weight' or 'local', got {reparam!r}")
        self.reparam = reparam
        self.rho_lr_mult = rho_lr_mult
        self._kept: tuple[torch.Tensor, torch.Tensor | None] | None = None  # see kept_variance
        self._holders = 0
        rho0 = math.log(math.expm1(posterior_sigma_init))  # softplus^-1
        self.weight_mu = nn.Parameter(torch.empty(vocab_size, n_embd))
        self.weight_rho = nn.Parameter(torch.full((vocab_size, n_embd), rho0))
        nn.init.normal_(self.weight_mu, mean=0.0, std=0.02)
        self.bias_mu: nn.Parameter | None = None
        self.bias_rho: nn.Parameter | None = None
        if bias:
            self.bias_mu = nn.Parameter(torch.full((vocab_size,), float(bias_init)))
            self.bias_rho = nn.Parameter(torch.full((vocab_size,), rho0))
        self.prior_mu = prior_mu
        self.prior_sigma = prior_sigma

    @classmethod
    def from_config(cls, spec: HeadSpec, cfg: BayesianConfig) -> BayesianHead:
        return cls(
            spec.n_embd,
            spec.vocab_size,
            bias=spec.bias,
            bias_init=spec.bias_init,
            prior_mu=cfg.prior_mu,
            prior_sigma=cfg.prior_sigma,
            posterior_sigma_init=cfg.posterior_sigma_init,
            reparam=cfg.reparam,
            rho_lr_mult=cfg.rho_lr_mult,
        )

    @classmethod
    def num_parameters(cls, spec: HeadSpec, cfg: BayesianConfig) -> int:
        """A mu and a rho for each of the V C weights and V biases."""
        return 2 * spec.vocab_size * (spec.n_embd + int(spec.bias))

    def optimizer_groups(self) -> list[dict[str, Any]]:
        """rho without weight decay and at ``rho_lr_mult`` times the learning rate: Adam moves a
        parameter by about lr per step, and sigma's useful range spans several units of rho."""
        rho = [p for p in (self.weight_rho, self.bias_rho) if p is not None and p.requires_grad]
        return [{"params": rho, "weight_decay": 0.0, "lr_mult": self.rho_lr_mult}] if rho else []

    def export_layer(self) -> tuple[torch.Tensor, torch.Tensor | None, str]:
        """The posterior mean, which ``logits(h, 0)`` (and so eval and sampling by default) uses."""
        w, b = self.weights(sample=False)
        return w, b, "the posterior mean of the Bayesian head's weights (no Monte-Carlo draws)"

    @property
    def mean_weight(self) -> nn.Parameter:
        return self.weight_mu

    def weights(self, sample: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A posterior draw (``sample=True``) or the posterior mean."""
        if not sample:
            return self.weight_mu, self.bias_mu
        w = self.weight_mu + F.softplus(self.weight_rho) * torch.randn_like(self.weight_mu)
        b = None
        if self.bias_mu is not None and self.bias_rho is not None:
            b = self.bias_mu + F.softplus(self.bias_rho) * torch.randn_like(self.bias_mu)
        return w, b

    def draw(self, sample: bool = True) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(W, b, KL) for one training forward pass: a posterior draw (or the mean) and KL(q || p).

        Same values as ``weights`` and ``kl``, through one autograd node per tensor with
        closed-form gradients (``gaussian.GaussianDraw``) rather than a dozen elementwise ones.
        """
        if not sample:
            return self.weight_mu, self.bias_mu, self.kl()
        w, kl = GaussianDraw.apply(self.weight_mu, self.weight_rho, self.prior_mu, self.prior_sigma)
        b = None
        if self.bias_mu is not None:
            b, kl_b = GaussianDraw.apply(self.bias_mu, self.bias_rho, self.prior_mu, self.prior_sigma)
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
        if self.bias_mu is not None and self.bias_rho is not None:
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
        if self.bias_mu is not None and self.bias_rho is not None:
            b_mu, b_sigma = self.bias_mu.detach().float(), F.softplus(self.bias_rho.detach().float())
            b = b_mu + b_sigma * torch.randn((rows, *b_mu.shape), generator=generator, device=mu.device)
        return RowDraws(w, b)

    def stats(self) -> dict[str, float]:
        s = F.softplus(self.weight_rho.detach().float())
        return {"sigma_mean": s.mean().item(), "sigma_min": s.min().item(), "sigma_max": s.max().item()}
