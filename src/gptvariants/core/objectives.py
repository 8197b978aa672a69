"""Training objectives and their registry, fused with the output projection and computed in chunks.

An objective maps a chunk of logits z (n, V) and its targets to the summed loss of its rows
and dL/dz. ``fused_linear_loss`` runs the projection z = h W^T + b one chunk of positions at a
time, asks the objective for (loss, dL/dz), and immediately folds dL/dz into the gradients of
h, W and b, so at most one chunk of (n, V) floats is alive and the total work is the same
three matmuls a dense computation needs (forward, dh, dW), with no recomputation in the
backward pass (the approach of Liger-Kernel's fused linear cross-entropy, generalised here to
every objective).

An objective states its equation once, as ``loss(z, y, sets)`` (per-row, differentiable); the
gradient then comes from autograd, so a new objective needs nothing else. The built-in ones
also write dL/dz in closed form (``loss_and_grad``), a fast path that is tested equal to the
autograd one. ``OBJECTIVES`` maps a config name to its class (``@register_objective``); an
objective's hyper-parameters are its ``Config``, a dataclass in components.py (flat config keys, as for heads).

Targets are sparse: ``y`` (N,) holds the true next token (-1 = ignore this position) and
``sets`` (N, K) the extra positive tokens of the sigmoid objective, padded with -1. No
(B, T, V) target is ever built.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..common.errors import InputError
from .components import OBJECTIVE_SPECS, NoKeys, SigmoidBCEConfig, SmoothConfig, check_registered
from .entmax import entmax, fenchel_young

OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(cls: type[Objective]) -> type[Objective]:
    """Class decorator: make an objective available to configs and variants as ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a name to be registered")
    check_registered(OBJECTIVE_SPECS, cls.name, cls)
    OBJECTIVES[cls.name] = cls
    return cls


class Objective:
    """A per-position loss on logits z (n, V). Subclasses define ``loss``; ``loss_and_grad`` is
    optional (a closed-form fast path). ``sigmoid``: the readout is not a softmax (``log_probs``)."""

    name: ClassVar[str] = ""
    sigmoid: ClassVar[bool] = False

    Config: ClassVar[type] = NoKeys  # the objective's own hyper-parameters (a components.py dataclass): none here

    @classmethod
    def from_config(cls, cfg: Any) -> Objective:
        """The objective with the run's hyper-parameters ``cfg`` (an instance of ``cls.Config``)."""
        return cls()

    def loss(self, z: torch.Tensor, y: torch.Tensor, sets: torch.Tensor | None) -> torch.Tensor:
        """Per-row loss (n,) of logits z (n, V) against y (n,) and the sets (n, K), as the equation
        reads; differentiable. Rows with y = -1 may hold anything (the caller masks them)."""
        raise NotImplementedError

    def loss_and_grad(
        self, z: torch.Tensor, y: torch.Tensor, sets: torch.Tensor | None, need_grad: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(per-row loss (n,), dL/dz (n, V) or None). ``z`` is fp32 and may be overwritten.

        This default differentiates ``loss`` with autograd (one extra (n, V) buffer per chunk).
        """
        if not need_grad:
            return self.loss(z, y, sets).detach(), None
        with torch.enable_grad():
            zg = z.detach().requires_grad_(True)
            loss = self.loss(zg, y, sets)
            (dz,) = torch.autograd.grad(loss.sum(), zg)
        return loss.detach(), dz

    def log_probs(self, z: torch.Tensor) -> torch.Tensor:
        """log p(v | context) of the predictive distribution, (..., V)."""
        return torch.log_softmax(z.float(), dim=-1)

    def sampling_scores(self, z: torch.Tensor) -> torch.Tensor | None:
        """Scores s (n, V) of one draw z (n, V) whose softmax is the distribution to sample from, or
        None to sample from ``log_probs``: z itself for a softmax readout."""
        return z

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _gather(z: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return z.gather(1, idx.clamp(min=0).unsqueeze(1)).squeeze(1)


@register_objective
class CrossEntropy(Objective):
    """L = logsumexp(z) - z_y;  dL/dz = softmax(z) - onehot(y)."""

    name = "ce"

    def loss(self, z, y, sets):
        return -_gather(torch.log_softmax(z, dim=1), y)

    def loss_and_grad(self, z, y, sets, need_grad):
        lse = torch.logsumexp(z, dim=1)
        loss = lse - _gather(z, y)
        if not need_grad:
            return loss, None
        dz = z.sub_(lse.unsqueeze(1)).exp_()  # softmax, in place
        dz.scatter_add_(1, y.clamp(min=0).unsqueeze(1), -torch.ones_like(dz[:, :1]))
        return loss, dz


@register_objective
class SmoothedCrossEntropy(Objective):
    """The study's label smoothing (paper eq. 1): q_y = 1 - eps, q_v = eps / (V - 1) for v != y.

    L = -sum_v q_v log p_v = logsumexp(z) - (1-eps) z_y - eps/(V-1) (sum_v z_v - z_y);
    dL/dz = softmax(z) - q. (PyTorch's ``label_smoothing`` instead gives eps/V to every token.)
    """

    name = "smooth"

    Config = SmoothConfig

    def __init__(self, eps: float) -> None:
        self.eps = eps

    @classmethod
    def from_config(cls, cfg: SmoothConfig) -> SmoothedCrossEntropy:
        return cls(cfg.label_smoothing)

    def loss(self, z, y, sets):
        log_p = torch.log_softmax(z, dim=1)
        off = self.eps / (z.shape[1] - 1)
        log_py = _gather(log_p, y)
        return -(1 - self.eps) * log_py - off * (log_p.sum(dim=1) - log_py)

    def loss_and_grad(self, z, y, sets, need_grad):
        V = z.shape[1]
        off = self.eps / (V - 1)
        lse = torch.logsumexp(z, dim=1)
        zy = _gather(z, y)
        loss = lse - (1 - self.eps) * zy - off * (z.sum(dim=1) - zy)
        if not need_grad:
            return loss, None
        dz = z.sub_(lse.unsqueeze(1)).exp_().sub_(off)
        dz.scatter_add_(1, y.clamp(min=0).unsqueeze(1), torch.full_like(dz[:, :1], -(1 - self.eps - off)))
        return loss, dz

    def __repr__(self) -> str:
        return f"SmoothedCrossEntropy(eps={self.eps})"


@register_objective
class SigmoidBCE(Objective):
    """Binary cross-entropy of sigmoid outputs against the positive set P = {y} U sets.

    L = -sum_{v in P} w log s(z_v) - sum_{v not in P} log(1 - s(z_v)) + lambda (sum_v s(z_v) - 1)^2,
    summed over the vocabulary (a mean over V would scale the positive signal by 1/V) and
    averaged over positions by the caller. With softplus(z) = -log(1 - s(z)) and
    -log s(z) = softplus(z) - z this is the dense sum_v softplus(z_v) plus a correction on the
    K+1 positives only:  sum_{v in P} (w - 1) softplus(z_v) - w z_v.
    dL/dz_v = s_v + 2 lambda (S - 1) s_v (1 - s_v)  +  [v in P] ((w - 1) s_v - w).

    Readout: BCE makes s_v estimate P(v in P | context). For sets of the distinct tokens
    among m draws from p (the true token and m - 1 teacher samples, ``set_draws`` = m) that is
    1 - (1 - p_v)^m, so the predictive distribution is p_v proportional to
    1 - (1 - s_v)^(1/m) = -expm1(logsigmoid(-z_v) / m); m = 1 (top-k sets, or the true token
    alone) gives the study's s_v / sum_u s_u.
    """

    name = "bce"
    sigmoid = True

    Config = SigmoidBCEConfig

    def __init__(self, pos_weight: float = 1.0, sum_penalty: float = 0.0, set_draws: int = 1) -> None:
        if set_draws < 1:
            raise InputError(f"set_draws must be >= 1, got {set_draws}")
        self.pos_weight = pos_weight
        self.sum_penalty = sum_penalty
        self.set_draws = set_draws

    @classmethod
    def from_config(cls, cfg: SigmoidBCEConfig) -> SigmoidBCE:
        return cls(cfg.pos_weight, cfg.sum_penalty, cfg.set_draws or 1)

    def loss(self, z, y, sets):
        pos = positives(y, sets)
        t = torch.zeros_like(z).scatter_add_(1, pos.clamp(min=0), (pos >= 0).to(z.dtype))  # multi-hot (ids distinct)
        loss = -(self.pos_weight * t * F.logsigmoid(z) + (1 - t) * F.logsigmoid(-z)).sum(dim=1)
        if self.sum_penalty:
            loss = loss + self.sum_penalty * (torch.sigmoid(z).sum(dim=1) - 1).square()
        return loss

    def loss_and_grad(self, z, y, sets, need_grad):
        pos = positives(y, sets)
        mask = (pos >= 0).to(z.dtype)
        idx = pos.clamp(min=0)
        zp = z.gather(1, idx)
        w = self.pos_weight
        loss = F.softplus(z).sum(dim=1) + (((w - 1) * F.softplus(zp) - w * zp) * mask).sum(dim=1)
        if not need_grad and self.sum_penalty == 0:
            return loss, None
        s = torch.sigmoid(z) if need_grad else None
        if self.sum_penalty > 0:
            s = torch.sigmoid(z) if s is None else s
            S = s.sum(dim=1)
            loss = loss + self.sum_penalty * (S - 1).square()
        if not need_grad:
            return loss, None
        if self.sum_penalty > 0:  # s (1 + c (1 - s)) = s ((1 + c) - c s), one temporary
            c = (2 * self.sum_penalty * (S - 1)).unsqueeze(1)
            s.mul_(torch.addcmul(1 + c, s, c, value=-1))
        dz = s
        dz.scatter_add_(1, idx, ((w - 1) * torch.sigmoid(zp) - w) * mask)
        return loss, dz

    def log_probs(self, z: torch.Tensor) -> torch.Tensor:
        if self.set_draws == 1:
            ls = F.logsigmoid(z.float())
        else:
            member = -torch.expm1(F.logsigmoid(-z.float()) / self.set_draws)  # 0 for z below about -100
            ls = member.clamp_min(torch.finfo(member.dtype).tiny).log()
        return ls - torch.logsumexp(ls, dim=-1, keepdim=True)

    def sampling_scores(self, z: torch.Tensor) -> torch.Tensor | None:
        return None

    def __repr__(self) -> str:
        return f"SigmoidBCE(pos_weight={self.pos_weight}, sum_penalty={self.sum_penalty}, set_draws={self.set_draws})"


@register_objective
class EntmaxLoss(Objective):
    """The Fenchel-Young loss of alpha-entmax (``core.entmax``), alpha = 1.5 here (``sparsemax``: 2):

    L = <p - e_y, z> + H_alpha(p),  p = entmax_alpha(z);  dL/dz = p - e_y.

    Readout: p has exact zeros, so a token outside the support would get an infinite NLL. The
    predictive distribution is therefore the eps-smoothed p_eps = (p + eps) / (1 + V eps) with
    eps = ``EPS`` = 1e-6 (the eps-perplexity of Martins et al., 2020, "Sparse Text Generation");
    sampling draws from p itself (``sampling_scores``), so generated tokens stay in the support.
    """

    name = "entmax"
    alpha: ClassVar[float] = 1.5
    EPS: ClassVar[float] = 1e-6

    def loss(self, z, y, sets):
        return fenchel_young(z, y, self.alpha, need_grad=False)[0]

    def loss_and_grad(self, z, y, sets, need_grad):
        return fenchel_young(z, y, self.alpha, need_grad)

    def probs(self, z: torch.Tensor) -> torch.Tensor:
        """The sparse p = entmax_alpha(z) (..., V)."""
        return entmax(z.float().reshape(-1, z.shape[-1]), self.alpha).view(z.shape)

    def log_probs(self, z: torch.Tensor) -> torch.Tensor:
        return ((self.probs(z) + self.EPS) / (1 + z.shape[-1] * self.EPS)).log()

    def sampling_scores(self, z: torch.Tensor) -> torch.Tensor | None:
        return self.probs(z).log()  # -inf outside the support


@register_objective
class SparsemaxLoss(EntmaxLoss):
    """The sparsemax loss: ``EntmaxLoss`` at alpha = 2, p = [z - tau]_+ (``--objective=sparsemax``)."""

    name = "sparsemax"
    alpha = 2.0


def positives(y: torch.Tensor, sets: torch.Tensor | None) -> torch.Tensor:
    """(n, K+1) distinct positive ids: the true token first, then the set without it and without
    repeats; -1 pads. Rows whose y is -1 (ignored) get no positives; the caller masks their loss.
    """
    y = y.unsqueeze(1)
    if sets is None:
        return y
    sets = torch.where(sets == y, torch.full_like(sets, -1), sets)  # y is already first
    if sets.shape[1] > 1:  # an externally built set may repeat an id: keep each once
        sets = sets.sort(dim=1).values
        repeat = torch.zeros_like(sets, dtype=torch.bool)
        repeat[:, 1:] = (sets[:, 1:] == sets[:, :-1]) & (sets[:, 1:] >= 0)
        sets = sets.masked_fill(repeat, -1)
    return torch.cat([y, sets], dim=1)


def build_objective(name: str, cfg: Any) -> Objective:
    """The registered objective ``name`` with the run's hyper-parameters."""
    if name not in OBJECTIVES:
        raise InputError(f"unknown objective {name!r}; known: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name].from_config(cfg)


def auto_chunk_size(vocab_size: int, device: torch.device) -> int:
    """Rows per chunk: ~32 MiB of fp32 logits on CPU, ~256 MiB on accelerators."""
    budget = 2**26 if device.type == "cuda" else 2**23
    return max(1, budget // vocab_size)


class _FusedLinearLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, bias, objective, y, sets, chunk_size, compute_dtype, grad_enabled):
        N, _ = h.shape
        valid = (y >= 0).sum().clamp(min=1)
        any_ignored = bool(valid < N)  # one host sync here rather than one per chunk
        # needs_input_grad stays True under torch.no_grad(), so the caller says whether grads are wanted
        need_h, need_w, need_b = (grad_enabled and n for n in ctx.needs_input_grad[:3])
        need_grad = need_h or need_w or need_b
        wc = weight.to(compute_dtype)
        bc = bias.to(compute_dtype) if bias is not None else None
        gh = torch.empty_like(h) if need_h else None
        acc = torch.promote_types(compute_dtype, torch.float32)  # fp32 loss and accumulators (fp64 in tests)
        gw = torch.zeros(weight.shape, dtype=acc, device=h.device) if need_w else None
        gb = torch.zeros(bias.shape, dtype=acc, device=h.device) if need_b else None
        total = torch.zeros((), dtype=acc, device=h.device)
        for s in range(0, N, chunk_size):
            e = min(s + chunk_size, N)
            hc = h[s:e].to(compute_dtype)
            z = (torch.addmm(bc, hc, wc.t()) if bc is not None else hc @ wc.t()).to(acc)
            yc = y[s:e]
            loss, dz = objective.loss_and_grad(z, yc, None if sets is None else sets[s:e], need_grad)
            if any_ignored:
                keep = yc >= 0
                loss = loss * keep
            total += loss.sum()
            if not need_grad:
                continue
            if any_ignored:
                dz.mul_(keep.unsqueeze(1).to(dz.dtype))
            dzc = dz.to(compute_dtype)
            if need_h:
                gh[s:e] = (dzc @ wc).to(h.dtype)
            if need_w:
                if compute_dtype == acc:
                    gw.addmm_(dzc.t(), hc)
                else:
                    gw += (dzc.t() @ hc).float()
            if need_b:
                gb += dz.sum(dim=0)
        inv = 1.0 / valid.to(acc)
        if need_h:
            gh.mul_(inv.to(gh.dtype))
        grads = [gh, gw.mul_(inv).to(weight.dtype) if need_w else None, gb.mul_(inv).to(bias.dtype) if need_b else None]
        ctx.save_for_backward(*[g if g is not None else torch.empty(0) for g in grads])
        ctx.has = [g is not None for g in grads]
        return total * inv

    @staticmethod
    def backward(ctx, grad_out):
        saved = ctx.saved_tensors
        gh, gw, gb = [saved[i] * grad_out.to(saved[i].dtype) if ctx.has[i] else None for i in range(3)]
        return gh, gw, gb, None, None, None, None, None, None


def fused_linear_loss(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    objective: Objective,
    y: torch.Tensor,
    sets: torch.Tensor | None = None,
    chunk_size: int = 0,
) -> torch.Tensor:
    """mean over positions with y >= 0 of objective(h W^T + b), never holding more than one chunk of logits.

    h: (..., C) hidden states; weight (V, C); bias (V,) or None; y (...) true next tokens;
    sets (..., K) extra positives, -1 padded. Inside autocast the projection runs in the
    autocast dtype and the loss in fp32.
    """
    C = h.shape[-1]
    h2, y2 = h.reshape(-1, C), y.reshape(-1)
    s2 = sets.reshape(-1, sets.shape[-1]) if sets is not None else None
    dev = h.device.type
    compute_dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else h.dtype
    chunk = chunk_size or auto_chunk_size(weight.shape[0], h.device)
    with torch.autocast(dev, enabled=False):
        return _FusedLinearLoss.apply(
            h2, weight, bias, objective, y2, s2, chunk, compute_dtype, torch.is_grad_enabled()
        )


class _LocalReparamLoss(torch.autograd.Function):
    """mean objective(z) with z = h mu^T + b_mu + sqrt(h^2 var^T + b_var) * eps, eps ~ N(0, 1) per
    (position, token), chunked like ``_FusedLinearLoss`` with the gradients formed in the same pass:
      dL/dmu = dz^T h,   dL/dvar = g^T h^2,   dL/dh = dz mu + 2 h (g var),   g = dz * eps / (2 s),
    where s = sqrt(h^2 var^T + b_var) and dz = dL/dz (and the bias terms: dz and g summed over positions)."""

    @staticmethod
    def forward(ctx, h, mu, var, b_mu, b_var, objective, y, sets, chunk_size, grad_enabled):
        N = h.shape[0]
        valid = (y >= 0).sum().clamp(min=1)
        need = grad_enabled and any(ctx.needs_input_grad[:5])
        acc = torch.promote_types(h.dtype, torch.float32)
        h32, mu32, var32 = h.to(acc), mu.to(acc), var.to(acc)
        grads = (
            {"h": torch.empty_like(h32), "mu": torch.zeros_like(mu32), "var": torch.zeros_like(var32)} if need else {}
        )
        if need and b_mu is not None:
            grads["b_mu"], grads["b_var"] = torch.zeros_like(b_mu, dtype=acc), torch.zeros_like(b_var, dtype=acc)
        total = torch.zeros((), dtype=acc, device=h.device)
        for s0 in range(0, N, chunk_size):
            hc, yc = h32[s0 : s0 + chunk_size], y[s0 : s0 + chunk_size]
            sd = torch.addmm(b_var.to(acc), hc.square(), var32.t()) if b_var is not None else hc.square() @ var32.t()
            sd = sd.sqrt_()
            eps = torch.randn_like(sd)
            z = torch.addcmul(torch.addmm(b_mu.to(acc), hc, mu32.t()) if b_mu is not None else hc @ mu32.t(), sd, eps)
            loss, dz = objective.loss_and_grad(z, yc, None if sets is None else sets[s0 : s0 + chunk_size], need)
            keep = (yc >= 0).to(acc)
            total += (loss * keep).sum()
            if not need:
                continue
            dz.mul_(keep[:, None])
            g = eps.mul_(dz).div_(sd.mul_(2))  # dL/d(s^2)
            grads["h"][s0 : s0 + chunk_size] = dz @ mu32 + 2 * hc * (g @ var32)
            grads["mu"].addmm_(dz.t(), hc)
            grads["var"].addmm_(g.t(), hc.square())
            if "b_mu" in grads:
                grads["b_mu"] += dz.sum(0)
                grads["b_var"] += g.sum(0)
        inv = 1.0 / valid.to(acc)
        names = ("h", "mu", "var", "b_mu", "b_var")
        out = [grads[k].mul_(inv) if k in grads else None for k in names]
        ctx.save_for_backward(*[t if t is not None else torch.empty(0) for t in out])
        ctx.has = [t is not None for t in out]
        ctx.dtypes = [t.dtype if t is not None else None for t in (h, mu, var, b_mu, b_var)]
        return total * inv

    @staticmethod
    def backward(ctx, grad_out):
        saved = ctx.saved_tensors
        grads = [(saved[i] * grad_out).to(ctx.dtypes[i]) if ctx.has[i] else None for i in range(5)]
        return (*grads, None, None, None, None, None)


def local_reparam_loss(
    h: torch.Tensor,
    mu: torch.Tensor,
    var: torch.Tensor,
    b_mu: torch.Tensor | None,
    b_var: torch.Tensor | None,
    objective: Objective,
    y: torch.Tensor,
    sets: torch.Tensor | None = None,
    chunk_size: int = 0,
) -> torch.Tensor:
    """Mean over positions with y >= 0 of objective(z) for Gaussian logits z ~ N(h mu^T + b_mu, h^2 var^T + b_var),
    drawn independently per position (``_LocalReparamLoss``); h (..., C), mu and var (V, C)."""
    C = h.shape[-1]
    h2, y2 = h.reshape(-1, C), y.reshape(-1)
    s2 = sets.reshape(-1, sets.shape[-1]) if sets is not None else None
    chunk = chunk_size or auto_chunk_size(mu.shape[0], h.device)
    with torch.autocast(h.device.type, enabled=False):
        return _LocalReparamLoss.apply(h2, mu, var, b_mu, b_var, objective, y2, s2, chunk, torch.is_grad_enabled())
