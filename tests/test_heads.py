"""Heads own their facts: parameter count, optimizer groups, export layer and per-sequence draws."""

import math

import pytest
import torch
import torch.nn as nn
from conftest import TINY_SHAPE

from gptvariants.core.components import HEAD_SPECS, ComponentSpec
from gptvariants.core.config import load_config
from gptvariants.core.heads import HEADS, BayesianHead, ExportRefused, Head, HeadEnsemble, HeadSpec, LinearHead
from gptvariants.core.model import GPT


def _model(variant, **over):
    shape = {k: str(v) for k, v in TINY_SHAPE.items() if k in ("n_layer", "n_head", "n_embd", "block_size")}
    cfg = load_config(variant, overrides={**shape, **over})
    cfg.model.vocab_size = 11
    torch.manual_seed(0)
    return GPT(cfg.model, cfg.objective)


@pytest.mark.parametrize("name", list(HEADS))
@pytest.mark.parametrize("bias", [False, True])
def test_each_heads_count_matches_the_base_class_count_on_the_meta_device(name, bias):
    cls = HEADS[name]
    spec, cfg = HeadSpec(8, 13, bias, sigmoid=bias), cls.Config()
    built = sum(p.numel() for p in cls.from_config(spec, cfg).parameters())
    assert cls.num_parameters(spec, cfg) == built == Head.num_parameters.__func__(cls, spec, cfg)


def test_the_bayesian_heads_rho_is_its_own_optimizer_group():
    model = _model("bayes", rho_lr_mult="4", output_bias="true")
    groups = model.configure_optimizer(0.1, 1e-3, (0.9, 0.99), "cpu").param_groups
    assert len(groups) == 3
    rho = groups[2]
    assert [id(p) for p in rho["params"]] == [id(model.head.weight_rho), id(model.head.bias_rho)]
    assert (rho["weight_decay"], rho["lr"], rho["lr_mult"]) == (0.0, 4e-3, 4.0)
    assert any(p is model.head.weight_mu for p in groups[0]["params"])
    assert any(p is model.head.bias_mu for p in groups[1]["params"])


class _Rho(LinearHead):
    """A linear head with an extra matrix whose name ends in _rho: no group of its own unless it asks."""

    def __init__(self, n_embd, vocab_size, bias=False, bias_init=0.0):
        super().__init__(n_embd, vocab_size, bias, bias_init)
        self.extra_rho = nn.Parameter(torch.zeros(2, 2))


def test_optimizer_groups_come_from_the_head_not_from_parameter_names(monkeypatch):
    monkeypatch.setitem(HEADS, "rho-named", _Rho)
    monkeypatch.setitem(HEAD_SPECS, "rho-named", ComponentSpec("rho-named"))
    model = _model("baseline", head="rho-named")
    groups = model.configure_optimizer(0.1, 1e-3, (0.9, 0.99), "cpu").param_groups
    assert len(groups) == 2 and any(p is model.head.extra_rho for p in groups[0]["params"])


def test_sequence_draws_are_declared_by_every_head():
    h = torch.randn(3, 8)
    linear = LinearHead(8, 5)
    torch.testing.assert_close(linear.sequence_sampler(3)(h), linear.logits(h))  # the default: the point estimate
    ens = HeadEnsemble(8, 5, k=3, bias=True)
    draws = ens.sequence_sampler(3, torch.Generator().manual_seed(0))
    z = draws(h)
    members = ens.logits(h)  # (K, 3, V)
    assert z.shape == (1, 3, 5) and draws.n_draws(8) == 1
    for r in range(3):  # each row is one member's logits for that row
        assert any(torch.allclose(z[0, r], members[k, r], atol=1e-6) for k in range(3))
    bayes = BayesianHead(8, 5, bias=True)
    assert bayes.sequence_sampler(2, torch.Generator().manual_seed(0))(h[:2]).shape == (1, 2, 5)

    class Noisy(LinearHead):
        stochastic = True

    with pytest.raises(NotImplementedError, match="does not define one draw per sequence"):
        Noisy(8, 5).sequence_sampler(1)


def test_export_layers_of_the_heads():
    w, b, note = LinearHead(8, 5, bias=True).export_layer()
    assert w.shape == (5, 8) and b.shape == (5,) and note == ""
    bayes = BayesianHead(8, 5)
    w, b, note = bayes.export_layer()
    assert w is bayes.weight_mu and b is None and "posterior mean" in note
    with pytest.raises(ExportRefused, match="averages the distributions of its 4 members"):
        HeadEnsemble(8, 5, k=4).export_layer()


def test_a_head_config_reaches_the_head():
    model = _model("bayes", prior_sigma="0.3", posterior_sigma_init="0.05", reparam="weight")
    head = model.head
    assert (head.prior_sigma, head.reparam) == (0.3, "weight")
    assert torch.nn.functional.softplus(head.weight_rho[0, 0]).item() == pytest.approx(0.05)
    assert len(_model("ensemble", ensemble_size="3").head.members) == 3
    assert _model("smooth", label_smoothing="0.25").objective.eps == 0.25
    assert _model("sig", set_draws="3", pos_weight="2").objective.set_draws == 3
    assert math.isclose(_model("sig").head.bias[0].item(), -math.log(11), rel_tol=1e-6)  # sigmoid: -log V
