"""Density of the final hidden state (after the final LayerNorm: the head's input), fitted on the
training split and stored with the run (``gptv density``); scored per position, higher = farther
from the training features:

    mahalanobis      min_k (h - mu_k)^T Sigma^-1 (h - mu_k)            (Lee et al. 2018)
    rel_mahalanobis  min_k MD_k(h) - MD_0(h),  MD_0 = (h - mu_0)^T Sigma_0^-1 (h - mu_0)   (Ren et al. 2021)
    knn              ||u - u_(k)||: the distance of u = h / ||h|| to its k-th nearest neighbour
                     among a stored subsample of normalised training features (Sun et al. 2022)

Classes k are the next token, for the ``classes`` most frequent targets, the other targets one
more class: the label the head is trained on, as in Lee et al.; with a single class the relative
distance would be 0 everywhere. mu_k are the class means, Sigma their shared (within-class)
covariance, mu_0 / Sigma_0 the Gaussian of all features; each covariance gets a ridge of
RIDGE x its mean variance so it inverts.

Fitting streams over positions with running float64 sums (per class: count and sum; over all:
the sum of outer products), so memory is K x C + C x C + the subsample, whatever the number of
positions. kNN uses chunked torch top-k (exact; faiss is not needed at these subsample sizes).
Scores are computed in the features' precision, at least float32 (3x faster than float64 on a
CPU; float64 features give the float64 values the tests compare with a dense reference).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from .. import metrics as M
from ..common.atomic import atomic_write
from ..common.errors import InputError
from ..common.progress import Progress
from ..core.model import GPT
from ..store.run import DENSITY_FILE, DENSITY_META

DENSITY_SCORES = ("mahalanobis", "rel_mahalanobis", "knn")
RIDGE = 1e-6
KNN_CHUNK_FLOATS = 2**24  # (rows, bank) similarities held at once


@dataclass
class FeatureDensity:
    """The fitted densities (module docstring). means (K, C), precision (C, C), mean0 (C,),
    precision0 (C, C): float64; bank (M, C) float32 unit rows; k: the neighbour whose distance is
    the kNN score."""

    means: torch.Tensor
    precision: torch.Tensor
    mean0: torch.Tensor
    precision0: torch.Tensor
    bank: torch.Tensor
    k: int

    def to(self, device: str | torch.device) -> FeatureDensity:
        t = {name: getattr(self, name).to(device) for name in ("means", "precision", "mean0", "precision0", "bank")}
        return FeatureDensity(**t, k=self.k)

    @torch.no_grad()
    def scores(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """{mahalanobis, rel_mahalanobis, knn}: (n,) each for features h (n, C), in h's precision (at
        least float32: an eval's features; float64 features give float64 distances)."""
        dtype = torch.promote_types(h.dtype, torch.float32)
        x = h.to(dtype)
        md = _quadratic(x, self.means.to(dtype), self.precision.to(dtype)).amin(1)
        md0 = _quadratic(x, self.mean0[None].to(dtype), self.precision0.to(dtype))[:, 0]
        return {"mahalanobis": md, "rel_mahalanobis": md - md0, "knn": self.knn(h).to(dtype)}

    def knn(self, h: torch.Tensor) -> torch.Tensor:
        """Distance of each normalised row of h (n, C) to its k-th nearest bank row, (n,)."""
        u = F.normalize(h.float(), dim=-1)
        k = min(self.k, len(self.bank))
        rows = max(1, KNN_CHUNK_FLOATS // len(self.bank))
        out = torch.empty(len(u), dtype=torch.float32, device=u.device)
        for s in range(0, len(u), rows):
            sim = (u[s : s + rows] @ self.bank.T).topk(k, dim=1).values[:, -1]
            out[s : s + rows] = (2.0 - 2.0 * sim).clamp_min(0.0).sqrt()
        return out

    def save(self, run_dir: Path, info: dict[str, Any]) -> None:
        tensors = {
            n: getattr(self, n).contiguous().cpu() for n in ("means", "precision", "mean0", "precision0", "bank")
        }
        atomic_write(Path(run_dir) / DENSITY_FILE, save_tensors(tensors))
        atomic_write(Path(run_dir) / DENSITY_META, json.dumps({"k": self.k, **info}, indent=1) + "\n")

    @classmethod
    def load(cls, run_dir: Path, step: int | None = None) -> FeatureDensity | None:
        """The density stored in ``run_dir``, None when none was fitted; InputError when unreadable, or
        when fitted at another step than ``step`` (the run trained on: its features moved)."""
        path, meta_path = Path(run_dir) / DENSITY_FILE, Path(run_dir) / DENSITY_META
        if not (path.is_file() and meta_path.is_file()):
            return None
        refit = f"refit it with `gptv density {run_dir}`"
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            density = cls(**load_tensors(path.read_bytes()), k=int(meta["k"]))
        except (ValueError, KeyError, TypeError, OSError) as e:
            raise InputError(f"the feature density in {run_dir} is unreadable ({e}); {refit}") from None
        if step is not None and meta.get("step", step) != step:
            raise InputError(
                f"the feature density in {run_dir} was fitted at step {meta['step']}, the run is at {step}; {refit}"
            )
        return density


def _quadratic(x: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """(x_i - m_j)^T P (x_i - m_j) for rows x (n, C), means (K, C): (n, K), >= 0."""
    xp = x @ precision
    mm = ((means @ precision) * means).sum(1)
    return ((xp * x).sum(1)[:, None] - 2.0 * xp @ means.T + mm[None]).clamp_min(0.0)


class _Sums:
    """Running float64 sums over positions: per class count and feature sum, and sum of h h^T."""

    def __init__(self, classes: int, width: int, device: torch.device) -> None:
        self.count = torch.zeros(classes, dtype=torch.float64, device=device)
        self.sum = torch.zeros(classes, width, dtype=torch.float64, device=device)
        self.outer = torch.zeros(width, width, dtype=torch.float64, device=device)

    def add(self, h: torch.Tensor, cls: torch.Tensor) -> None:
        x = h.double()
        self.count.index_add_(0, cls, torch.ones_like(cls, dtype=torch.float64))
        self.sum.index_add_(0, cls, x)
        self.outer += x.T @ x

    def gaussians(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(class means (K', C) of the classes seen, shared precision, mean0, precision0)."""
        n = self.count.sum()
        seen = self.count > 0
        means = self.sum[seen] / self.count[seen, None]
        mean0 = self.sum.sum(0) / n
        within = (
            self.outer
            - (self.sum[seen] / self.count[seen, None].sqrt()).T @ (self.sum[seen] / self.count[seen, None].sqrt())
        ) / n
        total = self.outer / n - torch.outer(mean0, mean0)
        return means, _inverse(within), mean0, _inverse(total)


def _inverse(cov: torch.Tensor) -> torch.Tensor:
    cov = (cov + cov.T) / 2
    ridge = RIDGE * cov.diagonal().mean().clamp_min(1e-12)
    return torch.linalg.inv(cov + ridge * torch.eye(len(cov), dtype=cov.dtype, device=cov.device))


@torch.no_grad()
def fit_density(
    model: GPT,
    tokens: np.ndarray,
    *,
    positions: int = 200_000,
    classes: int = 256,
    bank: int = 2048,
    k: int = 10,
    batch: int = 16,
    seed: int = 0,
    progress: bool = False,
) -> tuple[FeatureDensity, dict[str, Any]]:
    """Fit on about ``positions`` training positions (whole windows spread over ``tokens``, as the
    Laplace fit): -> (density, info for its JSON). ``bank``: normalised features kept for kNN."""
    if positions < 1 or classes < 1 or bank < 1 or k < 1:
        raise InputError(f"positions, classes, bank and k must be >= 1, got {positions}, {classes}, {bank}, {k}")
    block, V = model.config.block_size, model.config.vocab_size
    if len(tokens) < block + 2:
        raise InputError(f"{len(tokens)} training tokens: the density needs at least block_size + 2 = {block + 2}")
    t0 = time.perf_counter()
    device = next(model.parameters()).device
    windows = M.spread_windows(len(tokens), block, positions)
    counts = np.zeros(V, dtype=np.int64)
    for b, e, _ in windows:
        counts += np.bincount(np.asarray(tokens[b + 1 : e], dtype=np.int64), minlength=V)
    top = np.argsort(-counts, kind="stable")[: min(classes, int((counts > 0).sum()))]
    class_of = torch.full((V,), len(top), dtype=torch.long, device=device)  # the rest: one class
    class_of[torch.as_tensor(top, device=device)] = torch.arange(len(top), device=device)
    n_pos = len(windows) * block
    keep = np.sort(np.random.default_rng(seed).choice(n_pos, min(bank, n_pos), replace=False))
    sums, kept = _Sums(len(top) + 1, model.config.n_embd, device), []
    bar = Progress(progress, n_pos, desc="gptv density", unit="position")
    for i in range(0, len(windows), batch):
        ids = torch.as_tensor(np.stack([np.asarray(tokens[b:e], dtype=np.int64) for b, e, _ in windows[i : i + batch]]))
        ids = ids.to(device)
        h = model.transformer(ids[:, :-1]).reshape(-1, model.config.n_embd)
        sums.add(h, class_of[ids[:, 1:].reshape(-1)])
        offset = i * block
        mine = keep[(keep >= offset) & (keep < offset + len(h))] - offset
        kept.append(F.normalize(h[torch.as_tensor(mine, device=device)].float(), dim=-1))
        bar.update(len(h))
    bar.close()
    means, precision, mean0, precision0 = sums.gaussians()
    density = FeatureDensity(means, precision, mean0, precision0, torch.cat(kept), k)
    info = {
        "positions": n_pos,
        "classes": len(means),
        "bank": len(density.bank),
        "ridge": RIDGE,
        "fit_seconds": time.perf_counter() - t0,
    }
    return density, info
