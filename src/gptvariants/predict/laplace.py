"""Last-layer Laplace approximation (MacKay 1992; Daxberger et al., "Laplace Redux", 2021).

Post hoc, on a trained softmax run: the output weights W (V, C) -- with the bias as a last
column when the head has one, h' = [h, 1] -- get a Gaussian posterior around the trained
weights W*, whose precision is the generalised Gauss-Newton matrix of the cross-entropy plus
an isotropic prior precision lambda:

    P = sum_n Lambda_n (x) h_n h_n^T + lambda I,    Lambda_n = diag(p_n) - p_n p_n^T

over N training positions. Two factorisations, as the vocabulary allows:
    kfac   P ~ N (G (x) A) + lambda I with G = mean_n Lambda_n (V, V), A = mean_n h_n h_n^T;
           with G = Q_G diag(g) Q_G^T and A = Q_A diag(a) Q_A^T the logits z = W h of one
           position are Gaussian: z ~ N(W* h, Q_G diag(d) Q_G^T), d_j = sum_i (Q_A^T h)_i^2 /
           (N g_j a_i + lambda). V x V factors: used up to KFAC_MAX_VOCAB.
    diag   P_vc = sum_n p_nv (1 - p_nv) h_nc^2 + lambda, independent weights:
           z_v ~ N(W*_v h, sum_c h_c^2 / P_vc).
The predictive averages softmax(z_s) over S draws of z (``predictive.Member`` with this
sampler), like the Bayesian head. The laplace-torch library implements the same for
classifiers; here the logits never exist as (N, V) at once and draws are made per position in
chunks, which its dense (N, V) Jacobians would not allow at 50k words, so the closed form is
written out.

lambda is chosen on held-out tokens: the value, on a log grid then a finer one around the
best, with the lowest held-out NLL (Laplace Redux: marginal likelihood or held-out NLL; the
held-out NLL is the quantity the study reports), the predictive approximated for the search by
the probit (mean-field) formula softmax(z / sqrt(1 + pi/8 var(z))): one deterministic pass per
value instead of S draws. The fitted posterior's MC predictive is then reported beside the MAP's.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from ..common.atomic import atomic_write
from ..common.errors import InputError
from ..core.model import GPT
from ..metrics import spread_windows
from ..store.run import LAPLACE_FILE, LAPLACE_META, RunFolder
from .predictive import Draws, Member, Predictor, score_windows

FILE, META = LAPLACE_FILE, LAPLACE_META  # named by the run folder (store.run)
KFAC_MAX_VOCAB = 4096
GRID = np.logspace(-3, 7, 21)


class LaplacePosterior:
    """The fitted posterior of one run's output layer (module docstring)."""

    def __init__(self, kind: str, tensors: dict[str, torch.Tensor], n: int, prior_precision: float) -> None:
        if kind not in ("kfac", "diag"):
            raise InputError(f"Laplace kind must be kfac or diag, got {kind!r}")
        self.kind, self.t, self.n, self.prior_precision = kind, tensors, n, prior_precision

    # ------------------------------------------------------------------------- fitting

    @classmethod
    def from_statistics(cls, kind: str, stats: dict[str, torch.Tensor], n: int, prior_precision: float = 1.0):
        """kfac: stats A (C', C') and G (V, V) summed over n positions; diag: H (V, C') summed."""
        if kind == "kfac":
            a, q_a = torch.linalg.eigh(stats["A"].double() / n)
            g, q_g = torch.linalg.eigh(stats["G"].double() / n)
            tensors = {"a": a.clamp_min(0).float(), "Q_A": q_a.float(), "g": g.clamp_min(0).float(), "Q_G": q_g.float()}
        else:
            tensors = {"H": stats["H"].float()}
        return cls(kind, tensors, n, prior_precision)

    def with_prior(self, prior_precision: float) -> LaplacePosterior:
        return LaplacePosterior(self.kind, self.t, self.n, prior_precision)

    def inverse_precision(self) -> torch.Tensor:
        """(V, C') per-weight variances (diag) or 1 / (N g_j a_i + lambda) (kfac)."""
        if self.kind == "diag":
            return 1.0 / (self.t["H"] + self.prior_precision)
        return 1.0 / (self.n * torch.outer(self.t["g"], self.t["a"]) + self.prior_precision)

    # ------------------------------------------------------------------------- predicting

    def sampler(self, model: GPT) -> LaplaceSampler:
        return LaplaceSampler(self, model)

    # ------------------------------------------------------------------------- files

    def save(self, run_dir: Path, info: dict[str, Any]) -> None:
        meta = {"kind": self.kind, "n": self.n, "prior_precision": self.prior_precision, **info}
        atomic_write(Path(run_dir) / FILE, save_tensors({k: v.contiguous().cpu() for k, v in self.t.items()}))
        atomic_write(Path(run_dir) / META, json.dumps(meta, indent=1) + "\n")

    @staticmethod
    def check_fitted(run_dir: Path) -> None:
        if not RunFolder(run_dir).has_laplace():
            raise InputError(f"{run_dir} has no Laplace posterior: fit one with `gptv laplace {run_dir}`")

    @classmethod
    def load(cls, run_dir: Path, device: str | torch.device = "cpu") -> LaplacePosterior:
        cls.check_fitted(run_dir)
        try:
            meta = json.loads((Path(run_dir) / META).read_text(encoding="utf-8"))
            tensors = load_tensors((Path(run_dir) / FILE).read_bytes())
            return cls(
                meta["kind"],
                {k: v.to(device) for k, v in tensors.items()},
                int(meta["n"]),
                float(meta["prior_precision"]),
            )
        except (ValueError, KeyError, OSError) as e:
            raise InputError(
                f"the Laplace posterior in {run_dir} is unreadable ({e}); refit it with `gptv laplace {run_dir}`"
            ) from None


class LaplaceSampler:
    """Logit draws of a last-layer Laplace posterior: (S, n, V); ``samples=0`` gives the MAP logits."""

    def __init__(self, posterior: LaplacePosterior, model: GPT) -> None:
        self.posterior, self.model = posterior, model
        self.inv = posterior.inverse_precision()
        self.bias = model.head.weights(False)[1] is not None

    def n_draws(self, samples: int) -> int:
        return max(1, samples)

    def __call__(self, h: torch.Tensor, samples: int = 0, generator: torch.Generator | None = None) -> torch.Tensor:
        z = self.model.head.logits(h)  # (1, n, V): the trained weights
        if samples == 0:
            return z
        x = _augment(h.float(), self.bias)
        eps = torch.randn((samples, *z.shape[1:]), generator=generator, device=z.device)
        if self.posterior.kind == "diag":
            return z + (x.square() @ self.inv.t()).sqrt() * eps
        t = self.posterior.t
        d = (x @ t["Q_A"]).square() @ self.inv.t()  # (n, V): variances along G's eigenvectors
        return z + (d.sqrt() * eps) @ t["Q_G"].t()

    def variance(self, h: torch.Tensor) -> torch.Tensor:
        """(n, V): the variance of each logit at h (the diagonal of its covariance)."""
        x = _augment(h.float(), self.bias)
        if self.posterior.kind == "diag":
            return x.square() @ self.inv.t()
        t = self.posterior.t
        return ((x @ t["Q_A"]).square() @ self.inv.t()) @ t["Q_G"].square().t()

    def probit_log_probs(self, h: torch.Tensor) -> torch.Tensor:
        """log p of the probit (mean-field) approximation of the predictive, softmax(z / sqrt(1 + pi/8 var))
        (MacKay 1992; Laplace Redux's default for classification): deterministic, one pass."""
        z = self.model.head.logits(h)[0]
        return torch.log_softmax(z / (1 + math.pi / 8 * self.variance(h)).sqrt(), dim=-1)


def _augment(h: torch.Tensor, bias: bool) -> torch.Tensor:
    return torch.cat([h, torch.ones_like(h[:, :1])], dim=1) if bias else h


@torch.no_grad()
def curvature(model: GPT, tokens: np.ndarray, kind: str, budget: int) -> tuple[dict[str, torch.Tensor], int]:
    """The summed GGN statistics (``from_statistics``) of ``model`` over ~``budget`` positions."""
    windows = spread_windows(len(tokens), model.config.block_size, budget)
    predictor = Predictor([model], samples=0)
    bias = model.head.weights(False)[1] is not None
    stats: dict[str, torch.Tensor] = {}
    n = 0
    for _, _, draws in score_windows(predictor, tokens, windows, batch=16):
        x, p = _augment(_hidden(draws).float(), bias), draws.probs
        if kind == "kfac":
            _add(stats, "A", x.t() @ x)
            _add(stats, "G", torch.diag(p.sum(0)) - p.t() @ p)
        else:
            _add(stats, "H", (p - p.square()).t() @ x.square())
        n += len(x)
    return stats, n


def _hidden(draws: Draws) -> torch.Tensor:
    """The hidden states (n, C) behind draws of a one-pass predictor, as ``score_windows`` yields them."""
    assert draws.hidden is not None  # score_windows sets draws.hidden on every draws it yields
    return draws.hidden[0]


def _add(stats: dict[str, torch.Tensor], key: str, value: torch.Tensor) -> None:
    stats[key] = stats[key] + value.double() if key in stats else value.double()


@torch.no_grad()
def heldout_nll(
    model: GPT,
    posterior: LaplacePosterior | None,
    hidden: list[torch.Tensor],
    targets: list[torch.Tensor],
    samples: int,
    seed: int = 0,
) -> float:
    """Mean -log p(y) of the MC predictive (the MAP when ``posterior`` is None) on cached hidden states."""
    sampler = posterior.sampler(model) if posterior is not None else None
    predictor = Predictor([Member(model, sampler=sampler)], samples=samples if sampler else 0, seed=seed)
    total, count = 0.0, 0
    for h, y in zip(hidden, targets):
        total += -predictor.draws([h]).logprob(y).double().sum().item()
        count += len(y)
    return total / count


def _cache(model: GPT, tokens: np.ndarray, budget: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    windows = spread_windows(len(tokens), model.config.block_size, budget)
    hidden, targets = [], []
    for _, y, draws in score_windows(Predictor([model], samples=0), tokens, windows, batch=16):
        hidden.append(_hidden(draws))
        targets.append(y)
    return hidden, targets


@torch.no_grad()
def probit_nll(model: GPT, posterior: LaplacePosterior, hidden, targets) -> float:
    """Mean -log p(y) of the probit approximation of the predictive on cached hidden states."""
    sampler = posterior.sampler(model)
    total = sum(
        -sampler.probit_log_probs(h).gather(1, y[:, None]).double().sum().item() for h, y in zip(hidden, targets)
    )
    return total / sum(len(y) for y in targets)


def fit_prior_precision(model, base: LaplacePosterior, hidden, targets) -> tuple[float, list[dict]]:
    """The lambda of lowest held-out NLL under the probit approximation (one deterministic pass per
    value, where MC draws would cost S): the GRID, then 9 points between the best one's neighbours."""
    curve = [
        {"prior_precision": float(lam), "nll": probit_nll(model, base.with_prior(lam), hidden, targets)} for lam in GRID
    ]
    best_i = min(range(len(curve)), key=lambda i: curve[i]["nll"])
    lo, hi = GRID[max(best_i - 1, 0)], GRID[min(best_i + 1, len(GRID) - 1)]
    for lam in np.logspace(math.log10(lo), math.log10(hi), 9)[1:-1]:
        if not any(np.isclose(lam, c["prior_precision"]) for c in curve):  # the grid's own points are done
            nll = probit_nll(model, base.with_prior(lam), hidden, targets)
            curve.append({"prior_precision": float(lam), "nll": nll})
    best = min(curve, key=lambda c: c["nll"])
    return best["prior_precision"], sorted(curve, key=lambda c: c["prior_precision"])


def fit_laplace(
    run_dir: Path,
    model: GPT,
    train_tokens: np.ndarray,
    heldout_tokens: np.ndarray,
    *,
    kind: str = "auto",
    tokens: int = 100_000,
    heldout: int = 10_000,
    samples: int = 16,
) -> dict[str, Any]:
    """Fit, choose lambda, save into ``run_dir``; returns the record written to laplace.json."""
    if model.objective.sigmoid or model.head.stochastic:
        raise InputError(
            "the last-layer Laplace approximation here is for softmax heads with point weights "
            f"(this run: head {model.head.name!r}, objective {model.objective.name!r}); a Bayesian "
            "head already has a posterior, and a sigmoid head's BCE curvature is not implemented"
        )
    V = model.config.vocab_size
    kind = ("kfac" if V <= KFAC_MAX_VOCAB else "diag") if kind == "auto" else kind
    t0 = time.perf_counter()
    stats, n = curvature(model, train_tokens, kind, tokens)
    base = LaplacePosterior.from_statistics(kind, stats, n)
    curvature_s = time.perf_counter() - t0
    hidden, targets = _cache(model, heldout_tokens, heldout)
    prior, curve = fit_prior_precision(model, base, hidden, targets)
    posterior = base.with_prior(prior)
    fit_s = time.perf_counter() - t0
    info = {
        "train_positions": n,
        "heldout_positions": int(sum(len(y) for y in targets)),
        "samples": samples,
        "heldout_nll_map": heldout_nll(model, None, hidden, targets, samples),
        "heldout_nll_probit": min(c["nll"] for c in curve),
        "heldout_nll": heldout_nll(model, posterior, hidden, targets, samples),  # the MC predictive, as used
        "search": curve,
        "curvature_seconds": curvature_s,
        "fit_seconds": fit_s,
    }
    posterior.save(run_dir, info)
    return {"kind": kind, "prior_precision": prior, **info}
