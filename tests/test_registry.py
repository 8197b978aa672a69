"""A new head and a new objective are one class and one registry line each: configured by their own
keys, sized before allocation, trained, resumed, evaluated, sampled and exported through the
unchanged training loop, evaluation, generation, API and export."""

import json
import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn
from conftest import tiny_overrides

from gptvariants.apps.api import load
from gptvariants.apps.export import ExportError, export
from gptvariants.common.checks import Float
from gptvariants.core.components import HEAD_SPECS, OBJECTIVE_SPECS
from gptvariants.core.config import ConfigError, key, load_config
from gptvariants.core.heads import HEADS, Head, register_head
from gptvariants.core.model import GPT
from gptvariants.core.objectives import OBJECTIVES, Objective, register_objective
from gptvariants.core.sizing import TRAIN_BYTES_PER_PARAM, check_fits, count_parameters
from gptvariants.core.variants import REGISTRY, Variant
from gptvariants.evaluate import evaluation as E
from gptvariants.train.loop import train


class ScaledHead(Head):
    """z = exp(a) h W^T: a linear head with a learned log-scale a, started at log(scale_init) (a toy, with no bias)."""

    @dataclass
    class Config:
        scale_init: float = key(1.0, Float(0.0, lo_open=True))

    def __init__(self, n_embd: int, vocab_size: int, scale_init: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(vocab_size, n_embd) * 0.02)
        self.log_scale = nn.Parameter(torch.full((), math.log(scale_init)))

    @classmethod
    def from_config(cls, spec, cfg):
        return cls(spec.n_embd, spec.vocab_size, cfg.scale_init)

    @classmethod
    def num_parameters(cls, spec, cfg):
        return spec.vocab_size * spec.n_embd + 1

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
    saved = [(table, dict(table)) for table in (HEADS, OBJECTIVES, HEAD_SPECS, OBJECTIVE_SPECS)]
    register_head("scaled")(ScaledHead)  # the registration lines (a plugin's, at run time)
    register_objective(Brier)
    monkeypatch.setitem(REGISTRY, "toy", Variant("toy", "scaled", "brier", "sum_v (p_v - 1[v=y])^2, z = e^a h W^T"))
    yield
    for table, before in saved:
        table.clear()
        table.update(before)


def test_toy_head_sizes_itself_exactly_before_allocation(toy):
    cfg = load_config("toy", overrides={"n_layer": "2", "n_embd": "32", "n_head": "2", "scale_init": "2.0"})
    assert cfg.objective.scale_init == 2.0 and cfg.to_dict()["objective"]["scale_init"] == 2.0
    cfg.model.vocab_size = 50
    model = GPT(cfg.model, cfg.objective)
    assert model.head.log_scale.item() == pytest.approx(math.log(2.0))  # built from its own key
    n = sum(p.numel() for p in model.parameters())
    assert count_parameters(cfg) == n
    check_fits(cfg, 50, available=n * TRAIN_BYTES_PER_PARAM)
    with pytest.raises(ConfigError, match="training needs at least"):
        check_fits(cfg, 50, available=n * TRAIN_BYTES_PER_PARAM - 1)
    with pytest.raises(ConfigError, match="scale_init expects a finite number > 0"):
        load_config("toy", overrides={"scale_init": "0"})


def test_toy_head_and_objective_train_resume_evaluate_generate_and_export(toy, tiny_data, tmp_path):
    run = tmp_path / "toy"
    over = tiny_overrides(tiny_data, run, max_iters=30, eval_interval=30, learning_rate=1e-2, tie_weights=False)
    result = train(load_config("toy", overrides=over))
    model = result.model
    assert isinstance(model.head, ScaledHead) and isinstance(model.objective, Brier)
    assert model.head.log_scale.item() != 0.0  # the autograd gradient reached the head's own parameter
    resumed = train(load_config("toy", overrides={**over, "max_iters": 40}), resume=True)
    assert resumed.step == 40
    evals = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "eval"]
    assert evals[-1]["val_ce"] < evals[0]["val_ce"] - 0.2  # the predictive distribution improved
    assert 0 < evals[-1]["val_objective"] < 2  # the Brier score, on its own scale
    r = E.evaluate(run, tiny_data, out=tmp_path / "eval.json", num_samples=2, max_new_tokens=4)
    assert r["variant"] == "toy" and math.isfinite(r["perplexity"]["perplexity"])
    assert r["perplexity"]["nats_per_token"] == pytest.approx(evals[-1]["val_ce"], rel=0.1)
    lm = load(run)
    text = lm.generate("", 8, seed=0, stop_at_eot=False)
    assert len(lm.score(text)) == len(lm.tokenizer.encode(text))
    transformers = pytest.importorskip("transformers")
    export(run, tmp_path / "hf")  # the default export layer: the head's point-estimate weights e^a W
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    x = torch.randint(0, lm.model.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = lm.model.logits(lm.model.transformer(x))
        torch.testing.assert_close(hf(x).logits, want, atol=1e-4, rtol=1e-4)


def test_a_head_whose_export_layer_is_wrong_is_refused_before_writing(toy, tiny_data, tmp_path, monkeypatch):
    run = tmp_path / "toy"
    train(load_config("toy", overrides=tiny_overrides(tiny_data, run, max_iters=2, eval_interval=2, eval_iters=1)))
    monkeypatch.setattr(ScaledHead, "export_layer", lambda self: (self.weight, None, ""))  # forgets e^a
    pytest.importorskip("transformers")
    with pytest.raises(ExportError, match="cannot export the scaled head: its export_layer does not give"):
        export(run, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_unregistered_names_are_refused_with_the_registry():
    with pytest.raises(ConfigError, match="head expects one of linear, bayesian, ensemble, got .scaled."):
        load_config("baseline", overrides={"head": "scaled"})
    with pytest.raises(ConfigError, match="objective expects one of ce, smooth, bce, entmax, sparsemax, got .brier."):
        load_config("baseline", overrides={"objective": "brier"})
