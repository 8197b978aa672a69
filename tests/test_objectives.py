"""Each fused, chunked objective equals a direct dense implementation of its equation."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from gptvariants.core.gaussian import gaussian_kl
from gptvariants.core.heads import BayesianHead
from gptvariants.core.objectives import (
    OBJECTIVES,
    CrossEntropy,
    Objective,
    SigmoidBCE,
    SmoothedCrossEntropy,
    fused_linear_loss,
    positives,
)

N, C, V, K = 13, 8, 11, 4


def _dense_multi_hot(y, sets):
    t = torch.zeros(y.shape[0], V, dtype=torch.float64)
    t[torch.arange(y.shape[0]), y] = 1.0
    for i in range(y.shape[0]):
        for v in sets[i].tolist():
            if v >= 0:
                t[i, v] = 1.0
    return t


def ref_ce(z, y, sets):
    return F.cross_entropy(z, y, reduction="none")


def ref_smooth(eps):
    def f(z, y, sets):
        q = torch.full_like(z, eps / (V - 1))
        q[torch.arange(z.shape[0]), y] = 1 - eps
        return -(q * torch.log_softmax(z, -1)).sum(-1)

    return f


def ref_bce(w, lam):
    def f(z, y, sets):
        t = _dense_multi_hot(y, sets)
        s = torch.sigmoid(z)
        bce = -(w * t * torch.log(s) + (1 - t) * torch.log(1 - s)).sum(-1)
        return bce + lam * (s.sum(-1) - 1) ** 2

    return f


CASES = [
    (CrossEntropy(), ref_ce),
    (SmoothedCrossEntropy(0.1), ref_smooth(0.1)),
    (SmoothedCrossEntropy(0.05), ref_smooth(0.05)),
    (SigmoidBCE(), ref_bce(1.0, 0.0)),
    (SigmoidBCE(pos_weight=7.0), ref_bce(7.0, 0.0)),
    (SigmoidBCE(sum_penalty=0.5), ref_bce(1.0, 0.5)),
    (SigmoidBCE(pos_weight=3.0, sum_penalty=2.0), ref_bce(3.0, 2.0)),
]


def _inputs(seed=0, with_bias=True):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, C, generator=g, dtype=torch.float64)
    W = torch.randn(V, C, generator=g, dtype=torch.float64) * 0.5
    b = torch.randn(V, generator=g, dtype=torch.float64) if with_bias else None
    y = torch.randint(V, (N,), generator=g)
    sets = torch.randint(V, (N, K), generator=g)
    sets[:, -1] = -1  # padding
    sets[0, 0] = y[0]  # the true token may also appear in the set: counted once
    for i in range(N):  # teacher sets hold distinct ids
        seen = set()
        for j in range(K):
            v = int(sets[i, j])
            if v in seen:
                sets[i, j] = -1
            seen.add(v)
    return h, W, b, y, sets


@pytest.mark.parametrize("obj,ref", CASES, ids=[repr(c[0]) for c in CASES])
@pytest.mark.parametrize("chunk", [1, 5, 100])
def test_fused_matches_dense_value_and_grad(obj, ref, chunk):
    h, W, b, y, sets = _inputs()
    leaves = [t.clone().requires_grad_() for t in (h, W, b)]
    loss = fused_linear_loss(*leaves, obj, y, sets, chunk_size=chunk)
    loss.backward()

    dense = [t.clone().requires_grad_() for t in (h, W, b)]
    z = dense[0] @ dense[1].T + dense[2]
    ref_loss = ref(z, y, sets).mean()
    ref_loss.backward()

    torch.testing.assert_close(loss, ref_loss)
    for a, r in zip(leaves, dense):
        torch.testing.assert_close(a.grad, r.grad)


@pytest.mark.parametrize("obj,ref", CASES[:4], ids=[repr(c[0]) for c in CASES[:4]])
def test_ignored_positions_and_no_bias(obj, ref):
    h, W, _, y, sets = _inputs(seed=1, with_bias=False)
    y = y.clone()
    y[[2, 5]] = -1
    leaves = [t.clone().requires_grad_() for t in (h, W)]
    loss = fused_linear_loss(leaves[0], leaves[1], None, obj, y, sets, chunk_size=4)
    loss.backward()
    dense = [t.clone().requires_grad_() for t in (h, W)]
    keep = y >= 0
    z = dense[0] @ dense[1].T
    ref_loss = ref(z[keep], y[keep], sets[keep]).mean()
    ref_loss.backward()
    torch.testing.assert_close(loss, ref_loss)
    for a, r in zip(leaves, dense):
        torch.testing.assert_close(a.grad, r.grad)


def test_bce_reduction_is_sum_over_vocabulary():
    # all logits 0 -> every sigmoid 1/2: loss per position = V log 2 (the study's mean over V gave log 2)
    h = torch.zeros(3, C)
    W = torch.zeros(V, C)
    loss = fused_linear_loss(h, W, None, SigmoidBCE(), torch.tensor([0, 1, 2]))
    assert loss.item() == pytest.approx(V * math.log(2), rel=1e-6)


def test_sum_penalty_uses_probabilities_not_logits():
    # logits -log V -> s ~ 1/(V+1) each; sum s ~ V/(V+1): penalty small. On raw logits it would be huge.
    z_val = -math.log(V)
    h = torch.ones(1, 1)
    W = torch.full((V, 1), z_val)
    base = fused_linear_loss(h, W, None, SigmoidBCE(), torch.tensor([0]))
    pen = fused_linear_loss(h, W, None, SigmoidBCE(sum_penalty=1.0), torch.tensor([0]))
    s = 1 / (1 + math.exp(-z_val))
    assert (pen - base).item() == pytest.approx((V * s - 1) ** 2, rel=1e-5)


@pytest.mark.parametrize("obj,ref", CASES, ids=[repr(c[0]) for c in CASES])
def test_equation_is_the_dense_reference(obj, ref):
    """Each objective's own ``loss`` (its stated equation, the autograd fallback) equals the reference."""
    h, W, b, y, sets = _inputs(seed=3)
    z = h @ W.T + b
    torch.testing.assert_close(obj.loss(z, y, sets), ref(z, y, sets))


@pytest.mark.parametrize("obj", [c[0] for c in CASES], ids=[repr(c[0]) for c in CASES])
def test_closed_form_gradient_equals_the_autograd_fallback(obj):
    """The hand-derived fast path (loss_and_grad) and Objective's autograd default agree."""
    h, W, b, y, sets = _inputs(seed=4)
    z = h @ W.T + b
    fast_loss, fast_dz = obj.loss_and_grad(z.clone(), y, sets, need_grad=True)
    slow_loss, slow_dz = Objective.loss_and_grad(obj, z.clone(), y, sets, need_grad=True)
    torch.testing.assert_close(fast_loss, slow_loss)
    torch.testing.assert_close(fast_dz, slow_dz)


def test_registry_holds_the_built_in_objectives():
    assert {"ce": CrossEntropy, "smooth": SmoothedCrossEntropy, "bce": SigmoidBCE}.items() <= OBJECTIVES.items()


def test_repeated_ids_in_an_external_set_count_once():
    # a set built outside the project may repeat ids (and hold y): the BCE must see each positive once
    y = torch.tensor([3, 1])
    sets = torch.tensor([[5, 5, 3, -1], [2, 7, 2, 2]])
    pos = positives(y, sets)
    for row, first, want in zip(pos.tolist(), [3, 1], [[3, 5], [1, 2, 7]]):
        assert row[0] == first and sorted(v for v in row if v >= 0) == want
    z = torch.randn(2, V, dtype=torch.float64)
    deduped = torch.tensor([[5, -1, -1, -1], [2, 7, -1, -1]])
    torch.testing.assert_close(
        SigmoidBCE().loss_and_grad(z.clone(), y, sets, True)[0], ref_bce(1.0, 0.0)(z, y, deduped)
    )


def test_bayesian_kl_keeps_float64():
    head = BayesianHead(3, 4, bias=True).double()
    w, b, kl = head.draw(sample=True)
    assert head.kl().dtype == torch.float64 and kl.dtype == torch.float64
    torch.testing.assert_close(kl, head.kl())


def test_sampled_set_readout_inverts_membership():
    """Sets of the distinct tokens among m draws from p hold v with probability 1 - (1 - p_v)^m;
    a head whose sigmoid equals that membership must read back p exactly."""
    torch.manual_seed(0)
    p = torch.softmax(3 * torch.randn(6, 40, dtype=torch.float64), -1)
    for m in (1, 2, 8, 50):
        log_out = m * torch.log1p(-p)  # log(1 - member)
        z = torch.log(-torch.expm1(log_out)) - log_out  # sigmoid(z) = member = 1 - (1 - p)^m
        lp = SigmoidBCE(set_draws=m).log_probs(z.float())
        torch.testing.assert_close(lp.double(), p.log(), rtol=1e-4, atol=1e-4)
    # m = 1 is the study's normalised sigmoid
    z = torch.randn(3, 10)
    torch.testing.assert_close(
        SigmoidBCE(set_draws=1).log_probs(z), torch.log(torch.sigmoid(z) / torch.sigmoid(z).sum(-1, keepdim=True))
    )
    # extreme logits stay finite (saturated members, vanishing non-members)
    assert torch.isfinite(SigmoidBCE(set_draws=8).log_probs(torch.tensor([[40.0, -40.0, 0.0, -200.0]]))).all()
    with pytest.raises(ValueError, match="set_draws"):
        SigmoidBCE(set_draws=0)


def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(5, 3, generator=g)
    sigma = torch.rand(5, 3, generator=g) + 0.01
    ref = kl_divergence(Normal(mu, sigma), Normal(torch.tensor(0.1), torch.tensor(0.02))).sum()
    torch.testing.assert_close(gaussian_kl(mu, sigma, 0.1, 0.02), ref)


def test_bayesian_head_kl_gradient_and_sampling():
    torch.manual_seed(0)
    head = BayesianHead(4, 6, bias=True, prior_sigma=0.05, posterior_sigma_init=0.01)
    kl = head.kl()
    kl.backward()
    # reference: same KL through torch.distributions, gradient by autograd
    mu, rho = head.weight_mu.detach().clone().requires_grad_(), head.weight_rho.detach().clone().requires_grad_()
    bmu, brho = head.bias_mu.detach().clone().requires_grad_(), head.bias_rho.detach().clone().requires_grad_()
    p = Normal(torch.tensor(0.0), torch.tensor(0.05))
    ref = kl_divergence(Normal(mu, F.softplus(rho)), p).sum() + kl_divergence(Normal(bmu, F.softplus(brho)), p).sum()
    ref.backward()
    torch.testing.assert_close(kl, ref)
    torch.testing.assert_close(head.weight_mu.grad, mu.grad)
    torch.testing.assert_close(head.weight_rho.grad, rho.grad)
    # draws vary around the mean with the posterior sigma
    w1, _ = head.weights(sample=True)
    w2, _ = head.weights(sample=True)
    assert not torch.equal(w1, w2)
    wm, _ = head.weights(sample=False)
    assert torch.equal(wm, head.weight_mu)
    draws = torch.stack([head.weights(sample=True)[0] for _ in range(400)])
    assert draws.std(0).mean().item() == pytest.approx(0.01, rel=0.1)


@pytest.mark.parametrize("prior_mu", [0.0, 0.05])
def test_bayesian_draw_matches_autograd_composition(prior_mu):
    """head.draw (one fused autograd node) == weights(sample=True) + kl() through autograd, same noise."""
    torch.manual_seed(0)
    head = BayesianHead(5, 7, bias=True, prior_mu=prior_mu, prior_sigma=0.05, posterior_sigma_init=0.01)
    with torch.no_grad():
        head.weight_rho.add_(torch.randn_like(head.weight_rho) * 0.5)
    gw_out = torch.randn(7, 5, dtype=torch.float32)
    gb_out = torch.randn(7)

    def run(fused: bool):
        head.zero_grad()
        torch.manual_seed(123)
        if fused:
            w, b, kl = head.draw(sample=True)
        else:
            w, b = head.weights(sample=True)
            kl = head.kl()
        ((w * gw_out).sum() + (b * gb_out).sum() + 3.0 * kl).backward()
        return (
            w.detach(),
            kl.detach(),
            [p.grad.clone() for p in (head.weight_mu, head.weight_rho, head.bias_mu, head.bias_rho)],
        )

    w1, kl1, g1 = run(True)
    w2, kl2, g2 = run(False)
    torch.testing.assert_close(w1, w2)
    torch.testing.assert_close(kl1, kl2, rtol=1e-5, atol=1e-3)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("obj,ref", [CASES[0], CASES[3]], ids=["ce", "bce"])
def test_local_reparameterisation_matches_the_dense_equation(obj, ref):
    """The chunked local-reparameterised loss equals objective(h mu^T + b + sqrt(h^2 var^T + b_var) eps)
    written densely with the same eps, in value and in the gradients of h, mu, var and the bias terms."""
    from gptvariants.core.objectives import local_reparam_loss

    h, W, b, y, sets = _inputs(seed=5)
    var = torch.rand(V, C, dtype=torch.float64) * 0.3
    b_var = torch.rand(V, dtype=torch.float64) * 0.3
    leaves = [t.clone().requires_grad_() for t in (h, W, var, b, b_var)]
    torch.manual_seed(7)
    loss = local_reparam_loss(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], obj, y, sets, chunk_size=4)
    loss.backward()
    torch.manual_seed(7)  # the same eps, drawn chunk by chunk in the same order
    eps = torch.cat([torch.randn(min(4, N - s), V, dtype=torch.float64) for s in range(0, N, 4)])
    dense = [t.clone().requires_grad_() for t in (h, W, var, b, b_var)]
    z = dense[0] @ dense[1].T + dense[3] + (dense[0].square() @ dense[2].T + dense[4]).sqrt() * eps
    ref_loss = ref(z, y, sets).mean()
    ref_loss.backward()
    torch.testing.assert_close(loss, ref_loss)
    for a, r in zip(leaves, dense):
        torch.testing.assert_close(a.grad, r.grad)


def test_bayesian_head_local_reparameterisation_trains_rho():
    head = BayesianHead(6, 9, bias=True, posterior_sigma_init=0.05, reparam="local").double()
    h, y = torch.randn(20, 6, dtype=torch.float64), torch.randint(9, (20,))
    obj, kl = head.loss(h, CrossEntropy(), y, None, sample=True)
    (obj + kl / 1000).backward()
    assert head.weight_rho.grad.abs().sum() > 0 and head.bias_rho.grad.abs().sum() > 0
    point, _ = head.loss(h, CrossEntropy(), y, None, sample=False)  # evaluation: the posterior mean
    torch.testing.assert_close(point, torch.nn.functional.cross_entropy(h @ head.weight_mu.T + head.bias_mu, y))
