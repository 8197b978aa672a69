"""The Bayesian head's posterior learns within a short run and reports itself while training."""

import json

from conftest import tiny_overrides

from gptvariants.core.config import load_config
from gptvariants.train.loop import train


def test_posterior_moves_and_is_logged(tiny_data, tmp_path, capsys):
    run = tmp_path / "bayes"
    cfg = load_config(
        "bayes", overrides=tiny_overrides(tiny_data, run, max_iters=60, eval_interval=60, log_interval=20)
    )
    assert (cfg.objective.reparam, cfg.objective.posterior_sigma_init, cfg.objective.rho_lr_mult) == (
        "local",
        0.01,
        10.0,
    )
    train(cfg)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "train"]
    assert all({"kl", "kl_weight", "sigma_mean", "sigma_min", "sigma_max"} <= set(r) for r in steps)
    last = steps[-1]
    # sigma starts at 0.01 everywhere: after 60 steps it has moved, and differently for different weights
    assert abs(last["sigma_mean"] - 0.01) > 0.002 and last["sigma_max"] / last["sigma_min"] > 1.2
    assert "sigma" in capsys.readouterr().out  # on the progress line too


def test_kl_warm_up_ramps_the_weight(tiny_data, tmp_path):
    cfg = load_config(
        "bayes",
        overrides=tiny_overrides(
            tiny_data, tmp_path / "w", max_iters=20, eval_interval=20, log_interval=5, kl_warmup_iters=10
        ),
    )
    train(cfg)
    steps = [json.loads(line) for line in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    weights = [(r["step"], r["kl_weight"]) for r in steps if r["kind"] == "train"]
    assert weights == [(5, 0.4), (10, 0.9), (15, 1.0), (20, 1.0)]  # min(1, (step - 1) / 10) at the logged steps


def test_kept_posterior_variance_is_the_posteriors_within_its_block():
    import torch
    import torch.nn.functional as F

    from gptvariants.core.heads import BayesianHead

    head = BayesianHead(8, 5, bias=True)
    h = torch.randn(3, 8)

    def fresh():
        var = F.linear(h.square(), F.softplus(head.weight_rho).square(), F.softplus(head.bias_rho).square())
        return F.linear(h, head.weight_mu, head.bias_mu), var.sqrt()

    with torch.no_grad():
        with head.kept_variance():
            torch.testing.assert_close(head.logit_moments(h), fresh())
            kept = head.posterior_variance()[0]
            assert head.posterior_variance()[0] is kept  # computed once in the block
        head.weight_rho.add_(1.0)  # an optimizer step (fused AdamW does not bump the version counter)
        head.bias_rho.sub_(1.0)
        torch.testing.assert_close(head.logit_moments(h), fresh())  # outside the block: always afresh
        assert head.posterior_variance()[0] is not kept
    a, b = head.kept_variance(), head.kept_variance()  # two holders whose blocks end in either order
    with torch.no_grad():
        a.__enter__()
        b.__enter__()
        kept = head.posterior_variance()[0]
        a.__exit__(None, None, None)
        assert head.posterior_variance()[0] is kept  # still held by b
        b.__exit__(None, None, None)
        assert head.posterior_variance()[0] is not kept
    with head.kept_variance():  # with autograd the kept value is not used: std stays differentiable
        head.logit_moments(h)[1].sum().backward()
    assert head.weight_rho.grad is not None and head.weight_rho.grad.abs().sum() > 0
