"""A new head and a new objective are one class and one registry line each: trained and evaluated
through the unchanged training loop, evaluation, generation and API."""

import math

import pytest
import torch
import torch.nn as nn
from conftest import tiny_overrides

from gptvariants.apps.api import load
from gptvariants.core.config import ConfigError, load_config
from gptvariants.core.heads import HEADS, Head
from gptvariants.core.objectives import OBJECTIVES, Objective
from gptvariants.core.variants import REGISTRY, Variant
from gptvariants.evaluate import evaluation as E
from gptvariants.train.loop import train


class ScaledHead(Head):
    """z = exp(a) h W^T: a linear head with a learned log-scale a (a toy, with no bias)."""

    def __init__(self, n_embd: int, vocab_size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(vocab_size, n_embd) * 0.02)
        self.log_scale = nn.Parameter(torch.zeros(()))

    @classmethod
    def from_config(cls, n_embd, vocab_size, cfg, sigmoid):
        return cls(n_embd, vocab_size)

    @property
    def mean_weight(self):
        return self.weight

    def weights(self, sample=False):
        return self.weight * self.log_scale.exp(), None


class Brier(Objective):
    """L = sum_v (softmax(z)_v - 1[v = y])^2: only the equation; the gradient comes from autograd."""

    name = "brier"

    def loss(self, z, y, sets):
        p = torch.softmax(z, dim=-1)
        return p.square().sum(-1) - 2 * p.gather(1, y.clamp(min=0)[:, None]).squeeze(1) + 1


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(HEADS, "scaled", ScaledHead)
    monkeypatch.setitem(OBJECTIVES, "brier", Brier)
    monkeypatch.setitem(REGISTRY, "toy", Variant("toy", "scaled", "brier", "sum_v (p_v - 1[v=y])^2, z = e^a h W^T"))


def test_toy_head_and_objective_train_evaluate_and_generate(toy, tiny_data, tmp_path):
    run = tmp_path / "toy"
    cfg = load_config(
        "toy",
        overrides=tiny_overrides(tiny_data, run, max_iters=30, eval_interval=30, learning_rate=1e-2, tie_weights=False),
    )
    result = train(cfg)
    model = result.model
    assert isinstance(model.head, ScaledHead) and isinstance(model.objective, Brier)
    assert model.head.log_scale.item() != 0.0  # the autograd gradient reached the head's own parameter
    evals = [
        r
        for r in map(__import__("json").loads, (run / "metrics.jsonl").read_text().splitlines())
        if r["kind"] == "eval"
    ]
    assert evals[-1]["val_ce"] < evals[0]["val_ce"] - 0.2  # the predictive distribution improved
    assert 0 < evals[-1]["val_objective"] < 2  # the Brier score, on its own scale
    r = E.evaluate(run, tiny_data, out=tmp_path / "eval.json", num_samples=2, max_new_tokens=4)
    assert r["variant"] == "toy" and math.isfinite(r["perplexity"]["perplexity"])
    assert r["perplexity"]["nats_per_token"] == pytest.approx(evals[-1]["val_ce"], rel=0.1)
    lm = load(run)
    text = lm.generate("", 8, seed=0, stop_at_eot=False)
    assert len(lm.score(text)) == len(lm.tokenizer.encode(text))


def test_unregistered_names_are_refused_with_the_registry():
    with pytest.raises(ConfigError, match="head expects one of linear, bayesian, ensemble, got .scaled."):
        load_config("baseline", overrides={"head": "scaled"})
    with pytest.raises(ConfigError, match="objective expects one of ce, smooth, bce, got .brier."):
        load_config("baseline", overrides={"objective": "brier"})
