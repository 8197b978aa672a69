"""Output layers. A head owns the (V, C) output weights and hands them to the objective.

Every head exposes ``weights(sample)`` -> ``(W, b)`` so that the loss can fuse the output
projection with the objective in chunks (see ``objectives.fused_linear_loss``) instead of
materialising (B, T, V) logits, and ``kl()`` for the ELBO (zero for deterministic heads).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class LinearHead(nn.Module):
    """z = h W^T (+ b). ``bias_init`` sets the starting bias (sigmoid heads use -log V)."""

    def __init__(self, n_embd: int, vocab_size: int, bias: bool = False, bias_init: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, n_embd))
        self.bias = nn.Parameter(torch.full((vocab_size,), float(bias_init))) if bias else None
        nn.init.normal_(self.weight, mean=0.0, std=0.02)

    @property
    def mean_weight(self) -> nn.Parameter:
        return self.weight

    def weights(self, sample: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.weight, self.bias

    def kl(self) -> torch.Tensor:
        return self.weight.new_zeros(())

    def draw(self, sample: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(W, b, KL) for one training forward pass; a deterministic head has KL = 0."""
        return self.weight, self.bias, self.weight.new_zeros(())


class BayesianHead(nn.Module):
    """Mean-field Gaussian posterior q(W) = N(mu, softplus(rho)^2) per weight (and bias).

    Training draws one weight sample per forward pass, W = mu + softplus(rho) * eps with
    eps ~ N(0, I) shared by all positions of the micro-batch. This costs a single (N, C) x (C, V)
    matmul, the same as a linear head, whereas local reparameterisation and Flipout need a
    second matmul of the same size; with the output layer dominating small models the extra
    matmul would break the speed budget (<= 1.15x the baseline step). The price is more
    gradient variance across positions, which the ELBO's KL/N scaling keeps small in practice.

    KL(q || p) against the prior p = N(prior_mu, prior_sigma^2) is in closed form:
    sum_i log(sigma_p / sigma_i) + (sigma_i^2 + (mu_i - mu_p)^2) / (2 sigma_p^2) - 1/2.
    """

    def __init__(
        self,
        n_embd: int,
        vocab_size: int,
        bias: bool = False,
        bias_init: float = 0.0,
        prior_mu: float = 0.0,
        prior_sigma: float = 0.02,
        posterior_sigma_init: float = 1e-3,
    ) -> None:
        super().__init__()
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

    def kl(self) -> torch.Tensor:
        total = gaussian_kl(self.weight_mu, F.softplus(self.weight_rho), self.prior_mu, self.prior_sigma)
        if self.bias_mu is not None:
            total = total + gaussian_kl(self.bias_mu, F.softplus(self.bias_rho), self.prior_mu, self.prior_sigma)
        return total

    def sigma_stats(self) -> dict[str, float]:
        s = F.softplus(self.weight_rho.detach())
        return {"sigma_mean": s.mean().item(), "sigma_max": s.max().item()}


def gaussian_kl(mu: torch.Tensor, sigma: torch.Tensor, prior_mu: float, prior_sigma: float) -> torch.Tensor:
    """sum KL(N(mu, sigma^2) || N(prior_mu, prior_sigma^2)), summed over all elements, in fp32."""
    mu, sigma = mu.float(), sigma.float()
    return (
        math.log(prior_sigma) - torch.log(sigma) + (sigma.square() + (mu - prior_mu).square()) / (2 * prior_sigma**2) - 0.5
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
        s32, d32 = sigma.float().reshape(-1), d.float().reshape(-1)
        var_p = prior_sigma**2
        kl = mu.numel() * (math.log(prior_sigma) - 0.5) - torch.log(s32).sum() + (s32.dot(s32) + d32.dot(d32)) / (2 * var_p)
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


def build_head(kind: str, n_embd: int, vocab_size: int, *, output_bias: bool, sigmoid: bool, **bayes) -> nn.Module:
    """The head named by a variant. Sigmoid heads start their bias at -log V."""
    bias_init = -math.log(vocab_size) if sigmoid else 0.0
    if kind == "linear":
        return LinearHead(n_embd, vocab_size, bias=output_bias, bias_init=bias_init)
    if kind == "bayesian":
        return BayesianHead(n_embd, vocab_size, bias=output_bias, bias_init=bias_init, **bayes)
    raise ValueError(f"unknown head {kind!r}; known: linear, bayesian")
