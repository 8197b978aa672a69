"""Feature density of the final hidden state (predict.density): Mahalanobis against a dense numpy
reference, kNN against brute force, streaming fit = one-shot fit, storage, and `gptv density` + eval."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gptvariants import metrics as M
from gptvariants.common.errors import InputError
from gptvariants.core.config import load_config
from gptvariants.core.model import GPT
from gptvariants.predict import density as D

SHAPE = dict(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=12)


def _model() -> GPT:
    torch.manual_seed(0)
    cfg = load_config("baseline", overrides=SHAPE)
    return GPT(cfg.model, cfg.objective).eval()


def _features(model: GPT, tokens: np.ndarray, positions: int) -> tuple[np.ndarray, np.ndarray]:
    """Every fitted position's feature and next token, computed window by window."""
    hs, ys = [], []
    for b, e, _ in M.spread_windows(len(tokens), model.config.block_size, positions):
        x = torch.as_tensor(tokens[b : e - 1].astype(np.int64))[None]
        hs.append(model.transformer(x)[0].detach().double().numpy())
        ys.append(tokens[b + 1 : e])
    return np.concatenate(hs), np.concatenate(ys)


def _reference(h: np.ndarray, y: np.ndarray, classes: int, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense numpy Mahalanobis (min over class means, shared covariance) and relative Mahalanobis."""
    counts = np.bincount(y, minlength=12)
    top = np.argsort(-counts, kind="stable")[: min(classes, int((counts > 0).sum()))]
    cls = np.where(np.isin(y, top), y, -1)
    means = np.stack([h[cls == c].mean(0) for c in np.unique(cls)])
    within = sum((h[cls == c] - h[cls == c].mean(0)).T @ (h[cls == c] - h[cls == c].mean(0)) for c in np.unique(cls))
    within = within / len(h)
    total = np.cov(h.T, bias=True)

    def inv(c):
        c = (c + c.T) / 2
        return np.linalg.inv(c + D.RIDGE * np.trace(c) / len(c) * np.eye(len(c)))

    P, P0 = inv(within), inv(total)
    md = np.array([[(x - m) @ P @ (x - m) for m in means] for x in test]).min(1)
    md0 = np.array([(x - h.mean(0)) @ P0 @ (x - h.mean(0)) for x in test])
    return md, md - md0


@pytest.mark.parametrize("classes", [3, 256])
def test_mahalanobis_equals_dense_numpy_reference(classes):
    model, rng = _model(), np.random.default_rng(0)
    tokens = rng.integers(0, 12, 400)
    density, info = D.fit_density(model, tokens, positions=160, classes=classes, bank=50, batch=3)
    h, y = _features(model, tokens, 160)
    assert info["positions"] == len(h) and info["classes"] == (4 if classes == 3 else len(np.unique(y)))
    test = rng.normal(size=(7, 16)) * 0.5 + h[:7]
    md, rmd = _reference(h, y, classes, test)
    got = density.scores(torch.as_tensor(test))
    np.testing.assert_allclose(got["mahalanobis"].numpy(), md, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got["rel_mahalanobis"].numpy(), rmd, rtol=1e-6, atol=1e-6)


def test_knn_equals_brute_force_and_bank_is_a_subsample():
    model, rng = _model(), np.random.default_rng(1)
    tokens = rng.integers(0, 12, 400)
    density, _ = D.fit_density(model, tokens, positions=160, bank=40, k=3, batch=4)
    h, _ = _features(model, tokens, 160)
    unit = F.normalize(torch.as_tensor(h), dim=-1).float()
    assert len(density.bank) == 40 and all(torch.isclose(unit, b, atol=1e-6).all(1).any() for b in density.bank)
    test = torch.as_tensor(rng.normal(size=(9, 16)), dtype=torch.float32)
    u = F.normalize(test, dim=-1)
    brute = torch.cdist(u, density.bank).sort(dim=1).values[:, 2]
    torch.testing.assert_close(density.knn(test), brute, atol=1e-5, rtol=1e-5)
    D.KNN_CHUNK_FLOATS, old = 40 * 2, D.KNN_CHUNK_FLOATS  # two rows per chunk: the same distances
    try:
        torch.testing.assert_close(density.knn(test), brute, atol=1e-5, rtol=1e-5)
    finally:
        D.KNN_CHUNK_FLOATS = old


def test_fit_does_not_depend_on_batching_and_round_trips(tmp_path):
    model, tokens = _model(), np.random.default_rng(2).integers(0, 12, 300)
    a, info = D.fit_density(model, tokens, positions=120, bank=30, batch=1)
    b, _ = D.fit_density(model, tokens, positions=120, bank=30, batch=16)
    for name in ("means", "precision", "mean0", "precision0", "bank"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name))
    assert D.FeatureDensity.load(tmp_path) is None
    a.save(tmp_path, info)
    c = D.FeatureDensity.load(tmp_path)
    assert c is not None and c.k == a.k
    torch.testing.assert_close(c.precision, a.precision)
    a.save(tmp_path, {**info, "step": 5})
    assert D.FeatureDensity.load(tmp_path, step=5) is not None
    with pytest.raises(InputError, match="fitted at step 5, the run is at 6; refit"):
        D.FeatureDensity.load(tmp_path, step=6)
    (tmp_path / "density.json").write_text("{", encoding="utf-8")
    with pytest.raises(InputError, match="unreadable.*gptv density"):
        D.FeatureDensity.load(tmp_path)


def test_bad_input_is_refused():
    with pytest.raises(InputError, match="at least block_size"):
        D.fit_density(_model(), np.zeros(5, dtype=np.int64))
    with pytest.raises(InputError, match="must be >= 1"):
        D.fit_density(_model(), np.zeros(50, dtype=np.int64), k=0)
