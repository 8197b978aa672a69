"""Split conformal sets: the quantile, every score against a brute-force reference, coverage on
exchangeable data with a known answer, and `gptv conformal` on a tiny run."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import TINY

from gptvariants.core.config import load_config
from gptvariants.data.prepare import prepare
from gptvariants.predict import conformal as C
from gptvariants.predict.predictive import Draws
from gptvariants.train.loop import train

ALPHAS = (0.05, 0.1, 0.2)


def _chunk(n=400, V=12, seed=0, sigmoid=False):
    """Predictive rows p ~ Dirichlet(0.3) and true tokens drawn from p itself: exchangeable, and p is
    the true distribution, so every score's split-conformal set covers at >= 1 - alpha."""
    g = torch.Generator().manual_seed(seed)
    p = torch.distributions.Dirichlet(torch.full((V,), 0.3)).sample((n,)).clamp_min(1e-12)
    p = p / p.sum(1, keepdim=True)
    torch.manual_seed(seed)
    y = torch.multinomial(p, 1, generator=g).squeeze(1)
    member = 1 - (1 - p) ** 3 if sigmoid else None  # a monotone set probability, as a sigmoid head's
    return C.Chunk(Draws(p.log()[None], member), y, torch.rand(n, generator=g))


def _brute_score(rule: C.SetRule, p: np.ndarray, member, u: float, v: int) -> float:
    """s(x, v) by its definition, one token at a time."""
    if rule.score == "lac":
        return 1 - p[v]
    if rule.score == "sig":
        return 1 - member[v]
    order = sorted(range(len(p)), key=lambda t: (-p[t], t))  # ties by id, as a stable sort
    r = order.index(v) + 1
    before = sum(p[t] for t in order[: r - 1])
    s = before + (u * p[v] if rule.score.endswith("-rand") else p[v])
    return s + (rule.lam * max(0, r - rule.k_reg) if rule.score.startswith("raps") else 0.0)


@pytest.mark.parametrize(
    "rule",
    [C.SetRule(s, 0.8, 2, 0.1) for s in C.SCORES] + [C.SetRule("raps-rand", 1.3, 1, 0.5)],
    ids=lambda r: f"{r.score}-{r.q}",
)
def test_scores_and_sets_equal_their_definition(rule):
    c = _chunk(n=6, V=7, sigmoid=True)
    p, member = c.p.double().numpy(), c.draws.set_probs.double().numpy()
    true = rule.true_scores(c, c.y)
    mask = rule.members(c)
    for i in range(6):
        ref = [_brute_score(rule, p[i], member[i], float(c.u[i]), v) for v in range(7)]
        assert true[i].item() == pytest.approx(ref[int(c.y[i])], abs=1e-6)
        assert mask[i].tolist() == [s <= rule.q + 1e-7 for s in ref]


def test_conformal_quantile_is_the_ceil_order_statistic():
    s = np.array([0.5, 0.1, 0.9, 0.3])
    assert C.conformal_quantile(s, 0.2) == 0.9  # ceil(5 * 0.8) = 4th smallest of .1 .3 .5 .9
    assert C.conformal_quantile(s, 0.5) == 0.5  # ceil(2.5) = 3rd smallest
    assert C.conformal_quantile(s, 0.1) == math.inf  # ceil(4.5) = 5 > n: no finite threshold promises 90 %


def test_exchangeable_scores_cover_at_one_minus_alpha():
    """iid continuous scores: P(s_test <= q) = ceil((n+1)(1-alpha)) / (n+1), to within 1.5 points."""
    rng = np.random.default_rng(0)
    for alpha in ALPHAS:
        cover = [np.mean(rng.random(2000) <= C.conformal_quantile(rng.random(500), alpha)) for _ in range(40)]
        assert abs(np.mean(cover) - (1 - alpha)) < 0.015, (alpha, np.mean(cover))


@pytest.mark.parametrize("score", C.SCORES)
def test_every_score_covers_at_one_minus_alpha_on_exchangeable_tokens(score):
    cal, test = _chunk(n=4000, seed=1, sigmoid=True), _chunk(n=4000, seed=2, sigmoid=True)
    for alpha in ALPHAS:
        rule = C.SetRule(score, k_reg=2, lam=0.05)
        q = C.conformal_quantile(rule.true_scores(cal, cal.y).numpy(), alpha)
        fitted = C.SetRule(score, q, 2, 0.05)
        covered = fitted.members(test).gather(1, test.y[:, None]).float().mean().item()
        assert abs(covered - (1 - alpha)) < 0.015, (score, alpha, covered)


def test_stratified_and_summary_on_a_hand_computed_case():
    cols = {
        "r/covered": np.array([1, 0, 1, 1, 1, 0], dtype=bool),
        "r/size": np.array([1, 1, 3, 3, 50, 200]),
        "entropy": np.array([0.1, 0.2, 1.0, 1.1, 2.0, 3.0]),
    }
    by_size = C.stratified(cols["r/covered"].astype(float), cols["r/size"], C.SIZE_BINS)
    assert [(b["from"], b["count"], b["coverage"]) for b in by_size] == [
        (1, 2, 0.5),
        (2, 2, 1.0),
        (11, 1, 1.0),
        (101, 1, 0.0),
    ]
    s = C.summary(cols, "r")
    assert (s["coverage"], s["mean_size"], s["median_size"]) == (pytest.approx(4 / 6), pytest.approx(43.0), 3.0)
    assert math.isnan(s["worst_size_stratum_coverage"])  # no stratum has MIN_STRATUM positions


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("conformal")
    prepare("synthetic:tiny", root / "data")
    out = {}
    for v in ("baseline", "entmax"):
        cfg = load_config(v, None, {**TINY, "data": str(root / "data"), "out_dir": str(root / v), "max_iters": 30})
        train(cfg)
        out[v] = root / v
    return root, out


def test_gptv_conformal_fits_checks_and_stores_the_sets(runs):
    root, r = runs
    cmd = [sys.executable, "-m", "gptvariants", "conformal", str(r["entmax"]), "--alpha", "0.1", "--tokens", "3000"]
    out = subprocess.run(cmd + ["--ood", "synthetic?shift=0.5"], capture_output=True, text=True, check=True).stdout
    assert "raps-rand@0.1" in out and "under shift" in out
    fit = json.loads((r["entmax"] / "conformal.json").read_text())["fits"]["default"]
    assert set(fit["check"]) == {f"{s}@0.1" for s in C.SCORES if s != "sig"} | {"support"}
    for name, s in fit["check"].items():
        if name != "support":
            assert abs(s["coverage"] - 0.9) < 0.03, (name, s)  # 1500 check tokens: a few points of noise
    assert set(fit["ood"]) == set(fit["check"])
    rule = C.load_rule(r["entmax"], "default", 0.1, "aps")
    assert rule.score == "aps" and rule.q == fit["rules"]["aps@0.1"]["q"]


def test_a_missing_fit_names_the_command_to_run(runs):
    _, r = runs
    with pytest.raises(C.InputError, match="gptv conformal .* --alpha 0.1"):
        C.load_rule(r["baseline"], "default", 0.1)


class _Truth:
    """A stand-in synthetic language whose next-token distribution is one fixed row."""

    def __init__(self, p):
        self.p = np.asarray(p, dtype=np.float32)

    def iter_next_token_probs(self, tokens):
        yield 0, np.tile(self.p, (len(tokens), 1))


def test_floor_precision_recall_and_true_mass_on_a_hand_computed_case():
    from gptvariants.data.sources import Source
    from gptvariants.evaluate.sets import truth_columns

    source = Source("toy", np.zeros(8, dtype=np.int64), truth=_Truth([0.5, 0.3, 0.2, 0.0]))
    c = _chunk(n=2, V=4)
    out = truth_columns(source, 3, (0.1, 0.2))(c, {"r": torch.tensor([[True, True, False, True]] * 2)})
    assert out["floor@0.1"].tolist() == [3, 3] and out["floor@0.2"].tolist() == [2, 2]  # .5 .8 1.0 against .9, .8
    assert out["r/precision"][0].item() == pytest.approx(2 / 3) and out["r/recall"][0].item() == pytest.approx(2 / 3)
    assert out["r/true_mass"][0].item() == pytest.approx(0.8)


def test_sets_section_of_an_experiment(runs):
    from gptvariants.evaluate.comparators import System
    from gptvariants.evaluate.sets import SETS_FILE, run_sets

    root, r = runs
    systems = [System(v, [r[v]]) for v in ("baseline", "entmax")]
    rows, lines = run_sets(root, root / "data", systems, alphas=(0.1, 0.2), ood="synthetic?shift=0.5", tokens=2000)
    assert lines[0] == "## Sets" and "### alpha = 0.1 (coverage promised >= 0.9)" in lines
    assert any(line.startswith("Smallest valid set") for line in lines)
    support = [x for x in rows if x["set"] == "support"]
    assert [x["system"] for x in support] == ["entmax"]
    for x in rows:
        assert 0 <= x["precision"] <= 1 and 0 <= x["recall"] <= 1 and "ood_coverage" in x
        if x["set"] != "support":
            assert x["size_floor"] > 0 and abs(x["true_mass"] - x["coverage"]) < 0.05
    assert json.loads((root / SETS_FILE).read_text())["rows"][0]["system"] == "baseline"
    assert "lac@0.2" in json.loads((r["baseline"] / "conformal.json").read_text())["fits"]["default"]["rules"]


def test_a_rerun_reuses_each_systems_sets_and_a_changed_key_recomputes(runs, monkeypatch):
    import gptvariants.evaluate.sets as S
    from gptvariants.evaluate.comparators import System

    root, r = runs
    out, systems = root / "rerun", [System("baseline", [r["baseline"]])]
    first, lines = S.run_sets(out, root / "data", systems, alphas=(0.1,), tokens=1000)
    assert (out / "sets" / "baseline" / S.SETS_FILE).is_file()
    computed: list[str] = []
    real = S.sets_of_system
    monkeypatch.setattr(S, "sets_of_system", lambda s, *a: computed.append(s.name) or real(s, *a))
    again, lines_again = S.run_sets(out, root / "data", systems, alphas=(0.1,), tokens=1000)
    assert computed == [] and again == first and lines_again == lines
    S.run_sets(out, root / "data", systems, alphas=(0.2,), tokens=1000)  # another alpha: not the stored result
    assert computed == ["baseline"]


def test_conformal_filter_keeps_the_lac_set_and_never_empties_a_row():
    from gptvariants.decode.filters import conformal_filter

    probs = torch.tensor([[0.5, 0.3, 0.2], [0.4, 0.35, 0.25]])
    out = conformal_filter(probs.log(), probs, 0.3)
    assert torch.isinf(out).tolist() == [[False, False, True], [False, False, True]]
    out = conformal_filter(probs.log(), probs, torch.tensor([[0.9], [0.0]]))  # per row; row 0 keeps its argmax
    assert torch.isinf(out).tolist() == [[False, True, True], [False, False, False]]


def test_sampling_inside_a_one_token_set_is_greedy_decoding(runs):
    from gptvariants.decode.generate import generate
    from gptvariants.store.checkpoint import load_run

    _, r = runs
    model, _ = load_run(r["baseline"])
    prompts = [[1, 2, 3], [4, 5]]
    assert generate(model, prompts, 8, seed=0, conformal_p=1.0) == generate(model, prompts, 8, greedy=True)


def test_gptv_sample_conformal_reads_the_stored_set(runs):
    _, r = runs
    cmd = [sys.executable, "-m", "gptvariants", "sample", "--ckpt", str(r["entmax"]), "--prompt", "", "--device", "cpu"]
    subprocess.run(
        cmd + ["--max-new-tokens", "4", "--seed", "0", "--conformal", "0.1"], check=True, capture_output=True
    )
    with pytest.raises(C.InputError, match="no lac set at alpha 0.3"):
        C.load_rule(r["entmax"], "default", 0.3)


def test_language_model_score_gives_each_token_its_set_size(runs):
    from gptvariants.apps.api import load

    _, r = runs
    lm = load(r["entmax"], "cpu")
    text = lm.generate("", 12, seed=0)
    records = lm.score(text, conformal=0.1)
    min_p = C.lac_min_prob(lm.runs, lm.prediction, 0.1)
    assert records and all(t.set_size >= 1 for t in records)
    assert [t.in_set for t in records] == [t.prob >= min_p - 1e-6 for t in records]
    assert "set_size" in records[0].to_dict() and lm.score(text)[0].set_size is None
