"""entmax-1.5 and sparsemax, their Fenchel-Young objective and the entmax variant, against a
bisection reference (and the ``entmax`` package when it is installed)."""

import pytest
import torch

from gptvariants.core import entmax as E
from gptvariants.core.config import load_config
from gptvariants.core.entmax import entmax, fenchel_young, tsallis_entropy
from gptvariants.core.model import GPT
from gptvariants.core.objectives import OBJECTIVES, EntmaxLoss, Objective, SparsemaxLoss, fused_linear_loss
from gptvariants.core.variants import get_variant
from gptvariants.predict.predictive import Predictor

ALPHAS = [1.5, 2.0]
OBJ = {1.5: EntmaxLoss(), 2.0: SparsemaxLoss()}


def bisect_entmax(z: torch.Tensor, alpha: float, iters: int = 200) -> torch.Tensor:
    """p = [(alpha-1) z - tau]_+^(1/(alpha-1)) with sum p = 1, tau found by bisection in float64."""
    x = (alpha - 1) * z.double()
    lo, hi = x.amax(1, keepdim=True) - 1, x.amax(1, keepdim=True)  # sum p >= 1 at lo, 0 at hi
    for _ in range(iters):
        mid = (lo + hi) / 2
        big = ((x - mid).clamp_min(0) ** (1 / (alpha - 1))).sum(1, keepdim=True) >= 1
        lo, hi = torch.where(big, mid, lo), torch.where(big, hi, mid)
    return (x - (lo + hi) / 2).clamp_min(0) ** (1 / (alpha - 1))


def ref_loss(z: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
    """The Fenchel-Young loss by its definition, max_p <p, z> + H(p) - z_y; by Danskin's theorem its
    gradient is p* - e_y, so p* (from bisection) is held fixed."""
    p = bisect_entmax(z.detach(), alpha)
    return (p * z).sum(1) + tsallis_entropy(p, alpha) - z.gather(1, y[:, None]).squeeze(1)


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("scale", [0.01, 3.0, 30.0])  # a full sort (every score a candidate), partial sorts
def test_mapping_equals_bisection(alpha, scale):
    z = torch.randn(40, 500, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * scale
    p = entmax(z, alpha)
    torch.testing.assert_close(p, bisect_entmax(z, alpha), atol=1e-10, rtol=0)
    assert torch.allclose(p.sum(1), torch.ones(40, dtype=torch.float64))
    assert (p == 0).any() or scale < 1  # large scores leave most tokens outside the support


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_newton_threshold_of_flat_scores_converges_to_the_sorted_one(alpha, dtype, monkeypatch):
    """A fresh model's flat logits (every token a candidate) take Newton's method, which must converge
    without falling back to the sort, to the sorted closed form's threshold."""
    x = (alpha - 1) * torch.randn(40, 3000, dtype=dtype, generator=torch.Generator().manual_seed(6)) * 0.02
    x = x - x.amax(1, keepdim=True)
    exact = E._threshold(x.sort(dim=1, descending=True).values, alpha)[0]

    def no_sort(*args):
        raise AssertionError("Newton's method fell back to the sort")

    monkeypatch.setattr(E, "_threshold", no_sort)
    tau = E._newton_threshold(x, alpha)
    torch.testing.assert_close(tau, exact, atol=8 * torch.finfo(dtype).eps, rtol=0)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_loss_and_gradient_equal_the_reference_to_1e_5(alpha):
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(16, 30, generator=g) * 4).requires_grad_()
    y = torch.randint(30, (16,), generator=g)
    loss, dz = fenchel_young(z.detach().clone(), y, alpha, need_grad=True)
    ref = ref_loss(z, y, alpha)
    ref.sum().backward()
    torch.testing.assert_close(loss.double(), ref.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(dz.double(), z.grad.double(), atol=1e-5, rtol=0)
    assert (loss >= -1e-6).all()  # a Fenchel-Young loss is >= 0, 0 only when p = e_y


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("chunk", [1, 5, 100])
def test_fused_chunked_objective_matches_dense(alpha, chunk):
    g = torch.Generator().manual_seed(2)
    h, W = torch.randn(13, 8, generator=g, dtype=torch.float64), torch.randn(11, 8, generator=g, dtype=torch.float64)
    b, y = torch.randn(11, generator=g, dtype=torch.float64), torch.randint(11, (13,), generator=g)
    y[3] = -1  # an ignored position
    leaves = [t.clone().requires_grad_() for t in (h, W, b)]
    loss = fused_linear_loss(*leaves, OBJ[alpha], y, chunk_size=chunk)
    loss.backward()
    dense = [t.clone().requires_grad_() for t in (h, W, b)]
    keep = y >= 0
    ref = ref_loss(dense[0][keep] @ dense[1].T + dense[2], y[keep], alpha).mean()
    ref.backward()
    torch.testing.assert_close(loss, ref)
    for a, r in zip(leaves, dense):
        torch.testing.assert_close(a.grad, r.grad)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_closed_form_gradient_equals_autograd_through_the_mapping(alpha):
    z = torch.randn(6, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 3
    y = torch.arange(6)
    obj = OBJ[alpha]
    loss, dz = obj.loss_and_grad(z.clone(), y, None, True)
    auto_loss, auto_dz = Objective.loss_and_grad(obj, z.clone(), y, None, True)
    torch.testing.assert_close(loss, auto_loss)
    torch.testing.assert_close(dz, auto_dz)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_equals_the_entmax_package(alpha):
    pkg = pytest.importorskip("entmax")
    z = torch.randn(8, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 3
    y = torch.randint(40, (8,), generator=torch.Generator().manual_seed(5))
    ref = (pkg.Entmax15Loss if alpha == 1.5 else pkg.SparsemaxLoss)(reduction="none")(z, y)
    torch.testing.assert_close(fenchel_young(z.clone(), y, alpha, False)[0], ref, atol=1e-10, rtol=0)


def test_readout_is_eps_smoothed_and_sampling_is_sparse():
    obj = EntmaxLoss()
    z = torch.tensor([[4.0, 3.0, -5.0, -6.0]])
    p = bisect_entmax(z, 1.5).float()
    assert p[0, 2:].eq(0).all()
    torch.testing.assert_close(obj.log_probs(z).exp(), (p + 1e-6) / (1 + 4e-6))
    scores = obj.sampling_scores(z)
    assert scores is not None and torch.isinf(scores[0, 2:]).all()
    torch.testing.assert_close(torch.softmax(scores, -1), p)


def test_variant_is_registered_with_a_sparsemax_option():
    assert OBJECTIVES["entmax"] is EntmaxLoss and get_variant("entmax").objective == "entmax"
    cfg = load_config("entmax", overrides={"objective": "sparsemax"})
    assert OBJECTIVES[cfg.objective.objective].alpha == 2.0
    with pytest.raises(ValueError, match="entmax alpha must be one of"):
        entmax(torch.zeros(1, 3), 1.7)


def test_predictor_reads_out_entmax_and_export_refuses_it():
    cfg = load_config("entmax", overrides={"n_layer": "1", "n_embd": "16", "n_head": "2", "block_size": "8"})
    cfg.model.vocab_size = 50
    model = GPT(cfg.model, cfg.objective)
    h = 300 * torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    draws = Predictor([model], seed=0).draws([h])
    torch.testing.assert_close(draws.probs.sum(1), torch.ones(3))
    assert torch.isinf(draws.scores).any()  # the sampling distribution is the sparse one
    from gptvariants.apps.export import ExportError, readout_of

    with pytest.raises(ExportError, match="cannot export EntmaxLoss"):
        readout_of(model)
