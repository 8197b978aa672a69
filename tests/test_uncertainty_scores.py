"""Energy and max-logit from the one predictive computation, for softmax, sigmoid and several draws;
the density scores in `gptv eval` once `gptv density` has fitted them (issue 19)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_overrides

from gptvariants import load
from gptvariants.apps.cli.main import main
from gptvariants.core.config import load_config
from gptvariants.core.model import GPT
from gptvariants.data.dataset import TokenDataset
from gptvariants.evaluate import evaluation as E
from gptvariants.evaluate import uncertainty as U
from gptvariants.predict.predictive import Member, Predictor
from gptvariants.train.loop import train

SHAPE = dict(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=12)


def _model(variant: str, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    cfg = load_config(variant, overrides=SHAPE)
    return GPT(cfg.model, cfg.objective).eval()


def test_softmax_energy_and_max_logit_of_the_logits_under_temperature():
    model, h = _model("baseline"), torch.randn(5, 16)
    draws = Predictor([Member(model, temperature=2.0)], seed=0).draws([h], logit_stats=True)
    z = model.logits(h) / 2.0
    torch.testing.assert_close(draws.logit_stats["energy"], -torch.logsumexp(z, -1))
    torch.testing.assert_close(draws.logit_stats["max_logit"], z.amax(-1))
    assert Predictor([model]).draws([h]).logit_stats == {}  # not asked: nothing computed


def test_sigmoid_energy_is_minus_log_total_membership():
    model, h = _model("sig"), torch.randn(5, 16)
    draws = Predictor([model], seed=0).draws([h], logit_stats=True)
    z = model.logits(h)
    torch.testing.assert_close(draws.logit_stats["energy"], -torch.sigmoid(z).sum(-1).log())
    torch.testing.assert_close(draws.logit_stats["max_logit"], z.amax(-1))


def test_several_draws_read_the_mean_logits():
    a, b, h = _model("baseline", 0), _model("baseline", 1), torch.randn(4, 16)
    draws = Predictor([a, b], seed=0).draws([h, h], logit_stats=True)  # an ensemble of runs: one pass each
    z = (a.logits(h) + b.logits(h)) / 2
    torch.testing.assert_close(draws.logit_stats["energy"], -torch.logsumexp(z, -1))
    bayes, gen = _model("bayes"), torch.Generator().manual_seed(3)
    z_draws = bayes.head.logits(h, 4, gen)
    draws = Predictor([bayes], samples=4, seed=3).draws([h], logit_stats=True)
    torch.testing.assert_close(draws.logit_stats["max_logit"], z_draws.mean(0).amax(-1))


def test_scores_registry_signs_make_higher_more_uncertain():
    tokens = {"energy": np.array([1.0, 2.0]), "max_logit": np.array([3.0, 1.0]), "nll": np.zeros(2)}
    assert U.available(tokens) == ["surprisal", "energy", "max_logit"]
    np.testing.assert_array_equal(U.uncertainty_of(tokens, "max_logit"), [-3.0, -1.0])


@pytest.fixture(scope="module")
def run(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("density") / "run"
    train(load_config("baseline", None, tiny_overrides(tiny_data, out, max_iters=2)))
    return out


def test_gptv_density_then_eval_reports_the_density_scores(run, tiny_data, tmp_path):
    before = E.evaluate(run, tiny_data, num_samples=0, out=tmp_path / "a.json", ood="synthetic?shift=1.0&tokens=600")
    assert "knn" not in before["ood"]["auroc"]["token"]
    assert main(["density", str(run), "--positions", "400", "--bank", "64", "--k", "5", "--device", "cpu"]) == 0
    after = E.evaluate(run, tiny_data, num_samples=0, out=tmp_path / "b.json", ood="synthetic?shift=1.0&tokens=600")
    for name in ("mahalanobis", "rel_mahalanobis", "knn"):
        assert 0 <= after["ood"]["auroc"]["token"][name] <= 1 and name in after["selective"]["aurc"]
    assert after["ood"]["auroc"]["token"]["entropy"] == before["ood"]["auroc"]["token"]["entropy"]
    assert after["perplexity"]["nats_per_token"] == before["perplexity"]["nats_per_token"]
    # LanguageModel.score (and gptv serve's /score, its records' to_dict) carry the same scores
    lm = load(str(run))
    val = TokenDataset(tiny_data).split("val")
    records = lm.score(lm.tokenizer.decode([int(t) for t in val[:40]]))
    assert set(records[0].scores) == {"energy", "max_logit", "mahalanobis", "rel_mahalanobis", "knn"}
    assert records[0].to_dict()["scores"]["knn"] >= 0
