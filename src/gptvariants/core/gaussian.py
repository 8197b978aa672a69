"""Gaussian weights: the closed-form KL to a Gaussian prior and a fused draw-and-KL autograd node
(the Bayesian head's training pass)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


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


class GaussianDraw(torch.autograd.Function):
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
