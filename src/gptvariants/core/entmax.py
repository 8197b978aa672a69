"""alpha-entmax (Peters et al., ACL 2019): a sparse replacement for softmax, and its Fenchel-Young loss.

    entmax_alpha(z) = argmax_{p in simplex} <p, z> + H_alpha(p),
    H_alpha(p) = (1 - sum_v p_v^alpha) / (alpha (alpha - 1))      (Tsallis entropy)

has the closed form p_v = [(alpha - 1) z_v - tau]_+^(1 / (alpha - 1)), with tau the one threshold
that makes p sum to 1. Tokens below it get exactly 0: the support is a set. alpha = 2 is
sparsemax (p = [z - tau]_+), alpha = 1.5 is entmax-1.5 (p = [z/2 - tau]_+^2); both are exact here.

tau comes from the largest scores: with u the scores sorted in descending order and the support
being the first s of them, tau solves a linear (sparsemax) or quadratic (entmax-1.5) equation in
their first two moments. Since p_max <= 1, tau >= max_v (alpha - 1) z_v - 1, so only the scores
above that bound can be in the support: a partial sort (``topk``) of the k of them (k the largest
such count over the rows) is exact, with no retry (the ``entmax`` package instead guesses k and
doubles it; the tests compare against it). A trained model's support is small, so k is. Logits
near 0 (a fresh model) make every token a candidate, where a full sort of V scores per row is the
dominant cost: there tau comes instead from Newton's method on f(tau) = sum_v p_v(tau) - 1, convex
and decreasing, started below the root (so every step stays below it and the iteration is
monotone), over blocks of rows small enough to stay near the cache (``_newton_threshold``).

The Fenchel-Young loss of p = entmax(z) at the true token y is
    L(z, y) = <p - e_y, z> + H_alpha(p),      dL/dz = p - e_y,
so a training step needs p, nothing else (Blondel et al., JMLR 2020).
"""

from __future__ import annotations

import torch

ALPHAS = (1.5, 2.0)  # the exact mappings: entmax-1.5 and sparsemax
NEWTON_FLOATS = 2**19  # scores per Newton block (2 MiB in float32): near a core's cache, and few blocks at small V
NEWTON_ABOVE = 4  # Newton's method when more than V / NEWTON_ABOVE scores are candidates
NEWTON_STEPS = 60  # a cap; a block that has not converged by then takes the sort


def _threshold(u: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(tau (n, 1), support size (n,)) from scores u (n, k) sorted in descending order, already
    scaled by (alpha - 1); exact when u holds the whole support."""
    k = torch.arange(1, u.shape[1] + 1, dtype=u.dtype, device=u.device)
    mean = u.cumsum(1) / k
    if alpha == 2.0:  # sum_{i<=s} (u_i - tau) = 1
        tau = mean - 1 / k
    else:  # sum_{i<=s} (u_i - tau)^2 = 1: tau = mean - sqrt((1 - s var) / s)
        var = (u.square().cumsum(1) / k - mean.square()).clamp_min(0)
        tau = mean - ((1 - k * var) / k).clamp_min(0).sqrt()
    size = (tau <= u).sum(1, keepdim=True)  # the candidates whose own tau leaves them inside
    return tau.gather(1, size - 1), size.squeeze(1)


def entmax(z: torch.Tensor, alpha: float = 1.5) -> torch.Tensor:
    """alpha-entmax of z (n, V) along the last dimension (module docstring); alpha in ``ALPHAS``."""
    if alpha not in ALPHAS:
        raise ValueError(f"entmax alpha must be one of {ALPHAS}, got {alpha}")
    x = (alpha - 1) * z
    x = x - x.amax(1, keepdim=True)
    # p_max <= 1 puts tau >= max - 1 = -1: only the scores above -1 can be in the support
    k = int((x > -1).sum(1).max())
    if k > x.shape[1] // NEWTON_ABOVE:
        rows = max(1, NEWTON_FLOATS // x.shape[1])
        tau = torch.cat([_newton_threshold(x[s : s + rows], alpha) for s in range(0, len(x), rows)])
    else:
        tau = _threshold(x.topk(k, dim=1).values, alpha)[0]
    p = (x - tau).clamp_min_(0)
    return p if alpha == 2.0 else p.square_()


def _newton_threshold(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """tau (n, 1) for scaled, max-shifted scores x (n, V) by Newton's method on
    f(tau) = sum_v [x_v - tau]_+^(1/(alpha-1)) - 1 from a lower bound, to the dtype's precision.

    Lower bounds: max - 1 = -1, and for sparsemax the mean-based (sum x - 1) / V (the root when every
    token is in the support, which can only lower it). For entmax-1.5 the all-support root
    t = mean - sqrt(1/V - var) is an upper bound instead; one Newton step from it lands below the root
    (f is convex), close to it."""
    V, eps = x.shape[1], torch.finfo(x.dtype).eps
    lower = torch.full_like(x[:, :1], -1.0)
    if alpha == 2.0:
        tau = torch.maximum(lower, (x.sum(1, keepdim=True) - 1) / V)
    else:
        mean = x.mean(1, keepdim=True)
        gap = 1 / V - (x - mean).square().mean(1, keepdim=True)
        upper = mean - gap.clamp_min(0).sqrt()
        tau = torch.where(gap >= 0, torch.maximum(lower, upper + _newton_step(x, upper, alpha)), lower)
    for _ in range(NEWTON_STEPS):
        step = _newton_step(x, tau, alpha)
        tau = tau + step
        if bool((step.abs() <= 4 * eps * tau.abs().clamp_min(1)).all()):
            return tau
    return _threshold(x.sort(dim=1, descending=True).values, alpha)[0]


def _newton_step(x: torch.Tensor, tau: torch.Tensor, alpha: float) -> torch.Tensor:
    """-f(tau) / f'(tau) (n, 1) for ``_newton_threshold``'s f."""
    d = (x - tau).clamp_min_(0)
    if alpha == 2.0:  # f = sum d - 1, f' = -|support|
        return (d.sum(1, keepdim=True) - 1) / (d > 0).sum(1, keepdim=True).clamp_min(1)
    slope = 2 * d.sum(1, keepdim=True)  # f = sum d^2 - 1, f' = -2 sum d
    return (torch.linalg.vecdot(d, d).unsqueeze(1) - 1) / slope.clamp_min(torch.finfo(x.dtype).tiny)


def tsallis_entropy(p: torch.Tensor, alpha: float) -> torch.Tensor:
    """H_alpha(p) (n,) = (1 - sum_v p_v^alpha) / (alpha (alpha - 1))."""
    power = p.square() if alpha == 2.0 else p * p.sqrt()
    return (1 - power.sum(1)) / (alpha * (alpha - 1))


def fenchel_young(
    z: torch.Tensor, y: torch.Tensor, alpha: float, need_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(L (n,), dL/dz (n, V) or None) of the entmax Fenchel-Young loss at logits z (n, V) and
    targets y (n,) (module docstring); z may be overwritten."""
    p = entmax(z, alpha)
    idx = y.clamp(min=0).unsqueeze(1)
    loss = torch.linalg.vecdot(p, z) - z.gather(1, idx).squeeze(1) + tsallis_entropy(p, alpha)
    if not need_grad:
        return loss, None
    return loss, p.scatter_add_(1, idx, -torch.ones_like(p[:, :1]))
