"""Hand-computed checks of gptvariants.metrics."""

import itertools
import math

import numpy as np
import pytest
import torch

from gptvariants import metrics as M
from gptvariants.evaluate.report import plot_reliability
from gptvariants.predict.predictive import Draws

# ----------------------------------------------------------------------------- perplexity


@pytest.mark.parametrize(
    "n_tokens,block,stride", [(2, 4, 4), (10, 4, 4), (11, 4, 2), (100, 16, 5), (17, 16, 1), (5, 8, 3), (33, 8, 8)]
)
def test_sliding_windows_score_each_token_once_with_context(n_tokens, block, stride):
    windows = M.sliding_windows(n_tokens, block, stride)
    scored = []
    for k, (begin, end, score_from) in enumerate(windows):
        assert end - begin - 1 <= block  # input x = tokens[begin:end-1] fits the context
        assert begin < score_from <= end
        scored.extend(range(score_from, end))
        if k > 0:  # first scored token has the least context: score_from - begin tokens
            assert score_from - begin >= block - stride
    assert scored == list(range(1, n_tokens))


def test_sliding_windows_hand_case_and_disjoint_blocks():
    # 10 tokens, block 4, stride 2: HF scheme
    assert M.sliding_windows(10, 4, 2) == [(0, 5, 1), (2, 7, 5), (4, 9, 7), (6, 10, 9)]
    windows = M.sliding_windows(10, 4, 4)
    assert windows == [(0, 5, 1), (4, 9, 5), (8, 10, 9)]
    inputs = [set(range(b, e - 1)) for b, e, _ in windows]  # x = tokens[begin:end-1]
    assert all(a.isdisjoint(b) for a, b in itertools.combinations(inputs, 2))
    assert set().union(*inputs) == set(range(9))


@pytest.mark.parametrize("args", [(1, 4, 4), (10, 4, 0), (10, 4, 5), (10, 0, 1)])
def test_sliding_windows_rejects_bad_arguments(args):
    with pytest.raises(ValueError):
        M.sliding_windows(*args)


def test_perplexity_summary_hand_values():
    s = M.perplexity_summary(sum_nll_nats=20.0, n_tokens=10, n_bytes=40, n_words=8)
    assert s["nats_per_token"] == pytest.approx(2.0)
    assert s["perplexity"] == pytest.approx(math.exp(2.0))
    assert s["bits_per_byte"] == pytest.approx(20.0 / (40 * math.log(2)))
    assert s["word_perplexity"] == pytest.approx(math.exp(2.5))
    s = M.perplexity_summary(20.0, 10)
    assert s["bits_per_byte"] is None and s["word_perplexity"] is None
    with pytest.raises(ValueError):
        M.perplexity_summary(1.0, 0)


# ------------------------------------------------------------------ per-token statistics


def test_token_stats_three_class_hand_case():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.0, 0.5], [0.2, 0.3, 0.5]])
    targets = torch.tensor([0, 1, 1])
    s = M.token_stats(probs, targets)
    torch.testing.assert_close(s["confidence"], torch.tensor([0.7, 0.5, 0.5]))
    assert s["correct"].tolist() == [True, False, False]
    torch.testing.assert_close(s["p_true"], torch.tensor([0.7, 0.0, 0.3]))
    # Brier: (0.3^2 + 0.2^2 + 0.1^2), (0.5^2 + 1 + 0.5^2), (0.2^2 + 0.7^2 + 0.5^2)
    torch.testing.assert_close(s["brier"], torch.tensor([0.14, 1.5, 0.78]))
    assert s["nll"][0].item() == pytest.approx(-math.log(0.7), rel=1e-6)
    assert s["nll"][2].item() == pytest.approx(-math.log(0.3), rel=1e-6)
    assert math.isfinite(s["nll"][1].item()) and s["nll"][1].item() > 80  # p_true = 0 is clamped
    assert s["entropy"][1].item() == pytest.approx(math.log(2), rel=1e-6)  # 0 log 0 = 0


def test_entropy_of_uniform_is_log_v():
    V = 50257
    probs = torch.full((3, V), 1.0 / V)
    s = M.token_stats(probs, torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(s["entropy"], torch.full((3,), math.log(V)), rtol=1e-5, atol=1e-5)


def test_draws_token_stats_mutual_information():
    # entropy and MI over draws are computed once, by the predictive distribution's Draws
    probs = torch.softmax(torch.randn(5, 7, generator=torch.Generator().manual_seed(0)), -1)
    targets = torch.arange(5)
    agree = Draws(probs.expand(4, 5, 7).log()).token_stats(targets)
    torch.testing.assert_close(agree["mutual_information"], torch.zeros(5), atol=1e-6, rtol=0)
    torch.testing.assert_close(agree["expected_entropy"], agree["entropy"], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(agree["brier"], M.token_stats(probs, targets)["brier"])
    # two near one-hot draws on different classes: mean (1/2, 1/2, 0), each draw has entropy ~0
    draws = torch.tensor([[[1.0, 1e-30, 1e-30]], [[1e-30, 1.0, 1e-30]]])
    s = Draws(draws.log()).token_stats(torch.tensor([0]))
    assert s["expected_entropy"].item() == pytest.approx(0.0, abs=1e-6)
    assert s["mutual_information"].item() == pytest.approx(math.log(2), rel=1e-5)
    assert s["p_true"].item() == pytest.approx(0.5)


# ----------------------------------------------------------------------------- calibration


def test_ece_perfectly_calibrated_is_near_zero():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.05, 1.0, 200_000)
    correct = rng.random(conf.size) < conf
    assert M.expected_calibration_error(conf, correct) < 0.01
    assert M.expected_calibration_error(conf, correct, scheme="mass") < 0.01


@pytest.mark.parametrize("scheme", ["width", "mass"])
def test_ece_overconfident_hand_value(scheme):
    conf = np.full(1000, 0.9)
    correct = np.arange(1000) < 600  # accuracy 0.6
    assert M.expected_calibration_error(conf, correct, scheme=scheme) == pytest.approx(0.3)
    assert M.expected_calibration_error(torch.tensor(conf), torch.tensor(correct), scheme=scheme) == pytest.approx(0.3)


def test_reliability_curve_two_bins_hand_case():
    conf = [0.1, 0.2, 0.8, 0.9]
    correct = [0, 1, 1, 1]
    curve = M.reliability_curve(conf, correct, n_bins=2)
    np.testing.assert_allclose(curve.confidence, [0.15, 0.85])
    np.testing.assert_allclose(curve.accuracy, [0.5, 1.0])
    assert curve.counts.tolist() == [2, 2]
    # ECE = 0.5 * |0.15 - 0.5| + 0.5 * |0.85 - 1| = 0.25
    assert M.expected_calibration_error(conf, correct, n_bins=2) == pytest.approx(0.25)
    # equal-mass with 4 bins: one token per bin, ECE = mean |conf - correct| = (0.1+0.8+0.2+0.1)/4
    ece_mass = M.expected_calibration_error(conf, correct, n_bins=4, scheme="mass")
    assert ece_mass == pytest.approx(0.3)
    with pytest.raises(ValueError):
        M.reliability_curve(conf, correct, scheme="quantile")


def test_equal_mass_bins_have_equal_counts_and_keep_ties_together():
    conf = np.random.default_rng(5).permutation(np.arange(1, 101) / 101)
    curve = M.reliability_curve(conf, conf > 0.5, n_bins=4, scheme="mass")
    assert curve.counts.tolist() == [25, 25, 25, 25]
    tied = M.reliability_curve([0.3] * 6 + [0.9] * 2, [1] * 8, n_bins=4, scheme="mass")
    assert tied.counts.tolist() == [6, 2]


def test_kl_and_calibration_vs_truth():
    p = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    q = torch.tensor([[0.25, 0.75, 0.0], [0.2, 0.3, 0.5]])
    kl = M.kl_per_token(p, q)
    assert kl[0].item() == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3), rel=1e-6)
    assert kl[1].item() == pytest.approx(0.0, abs=1e-7)
    model_zero = M.kl_per_token(torch.tensor([[0.5, 0.5]]), torch.tensor([[1.0, 0.0]]))
    assert math.isfinite(model_zero.item()) and model_zero.item() > 40
    c = M.calibration_vs_truth(q, p)
    torch.testing.assert_close(c["confidence"], torch.tensor([0.75, 0.5]))
    torch.testing.assert_close(c["true_prob_of_pred"], torch.tensor([0.5, 0.5]))
    # bins of width 1/2: {0.5} and {0.75} -> 0.5*|0.5-0.5| + 0.5*|0.75-0.5|
    assert M.true_probability_ece(c["confidence"], c["true_prob_of_pred"], n_bins=2) == pytest.approx(0.125)


def test_plot_reliability_writes_png(tmp_path):
    rng = np.random.default_rng(1)
    conf = rng.uniform(0.2, 1.0, 500)
    curves = {"calibrated": (conf, rng.random(500) < conf), "overconfident": (conf, rng.random(500) < conf - 0.2)}
    path = plot_reliability(curves, tmp_path / "sub" / "rel.png", title="test")
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------- AUROC


def _auroc_pairs(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_auroc_hand_case_with_ties():
    scores = [0.1, 0.4, 0.4, 0.4, 0.8, 0.2, 0.8]
    labels = [0, 1, 0, 1, 1, 0, 0]
    # positives 0.4, 0.4, 0.8 vs negatives 0.1, 0.4, 0.2, 0.8: (2.5 + 2.5 + 3.5) / 12
    assert M.auroc(scores, labels) == pytest.approx(8.5 / 12)
    assert M.auroc(scores, labels) == pytest.approx(_auroc_pairs(scores, labels))
    rng = np.random.default_rng(2)
    s, y = rng.integers(0, 5, 300).astype(float), rng.random(300) < 0.3
    assert M.auroc(torch.tensor(s), torch.tensor(y)) == pytest.approx(_auroc_pairs(s, y))


def test_auroc_separation_and_degenerate():
    assert M.auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert M.auroc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 0.0
    assert math.isnan(M.auroc([0.1, 0.2], [1, 1]))


# ---------------------------------------------------------------------- multi-label sets


def test_set_counts_and_prf_hand_case():
    probs = torch.tensor([[0.9, 0.6, 0.1, 0.0], [0.2, 0.2, 0.2, 0.2], [0.7, 0.1, 0.8, 0.5]])
    refs = torch.tensor([[0, 2, -1], [3, -1, -1], [2, 3, 3]])  # duplicate 3 counts once
    tp, n_pred, n_ref = M.set_counts(probs, refs, tau=0.5)
    assert tp.tolist() == [1, 0, 2] and n_pred.tolist() == [2, 0, 3] and n_ref.tolist() == [2, 1, 2]
    tp_b, n_pred_b, _ = M.set_counts(probs >= 0.5, refs)
    assert tp_b.tolist() == tp.tolist() and n_pred_b.tolist() == n_pred.tolist()
    r = M.set_prf(tp, n_pred, n_ref)
    assert r["micro_precision"] == pytest.approx(3 / 5)
    assert r["micro_recall"] == pytest.approx(3 / 5)
    assert r["micro_f1"] == pytest.approx(3 / 5)
    assert r["macro_precision"] == pytest.approx((1 / 2 + 0 + 2 / 3) / 3)  # empty set -> 0
    assert r["macro_recall"] == pytest.approx((1 / 2 + 0 + 1) / 3)
    assert r["macro_f1"] == pytest.approx((2 / 4 + 0 + 4 / 5) / 3)
    assert r["mean_pred_size"] == pytest.approx(5 / 3)
    assert r["mean_ref_size"] == pytest.approx(5 / 3)


def test_set_curve_matches_set_counts():
    probs = torch.softmax(3 * torch.randn(6, 20, generator=torch.Generator().manual_seed(3)), -1)
    refs = torch.randint(0, 20, (6, 4), generator=torch.Generator().manual_seed(4))
    refs[0, 2:] = -1
    taus = [0.01, 0.05, 0.2]
    tp, n_pred, n_ref = M.set_curve(probs, refs, taus)
    for t, tau in enumerate(taus):
        tp_t, n_pred_t, n_ref_t = M.set_counts(probs, refs, tau)
        assert tp[t].tolist() == tp_t.tolist() and n_pred[t].tolist() == n_pred_t.tolist()
        assert n_ref.tolist() == n_ref_t.tolist()


# ------------------------------------------------------------------------------ diversity


def test_self_bleu_identical_and_disjoint():
    text = "the cat sat on the mat and looked out of the window at the rain"
    assert M.self_bleu([text] * 3) == pytest.approx(100.0)
    disjoint = [" ".join(f"{letter}{i}x" for i in range(50)) for letter in "abc"]
    assert M.self_bleu(disjoint) == pytest.approx(0.0, abs=1e-9)
    half = ["a b c d e f g h", "a b c d w x y z"]
    assert 0.0 < M.self_bleu(half) < 100.0
    with pytest.raises(ValueError):
        M.self_bleu([text])


def test_self_bleu_equals_sacrebleu_sentence_bleu_average():
    import sacrebleu

    rng = np.random.default_rng(6)
    vocab = ["the", "cat", "sat", "on", "mat", "dog", "ran", ",", "it's", "(a)", "rain."]
    texts = [" ".join(rng.choice(vocab, size=rng.integers(1, 25))) for _ in range(12)]
    texts += [texts[0], "", texts[3] + " extra words here"]  # duplicates, empty, near-copy
    expected = np.mean([sacrebleu.sentence_bleu(h, texts[:i] + texts[i + 1 :]).score for i, h in enumerate(texts)])
    assert M.self_bleu(texts) == pytest.approx(expected, rel=1e-9)


def test_distinct_n_and_lengths():
    assert M.distinct_n(["a b a b"], 1) == pytest.approx(0.5)
    assert M.distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    # n-grams never span two texts: "b c" is not a bigram here
    assert M.distinct_n(["a b", "c d"], 2) == pytest.approx(1.0)
    assert M.distinct_n(["a b c d e", "a b c d e"], 4) == pytest.approx(2 / 4)
    # study variant: 2 unique 4-grams / 10 words
    assert M.distinct4_study(["a b c d e", "a b c d e"]) == pytest.approx(2 / 10)
    assert M.distinct_n([""], 1) == 0.0
    assert M.mean_length_words(["a b c", "d", ""]) == pytest.approx(4 / 3)


# ----------------------------------------------------------------- OOD detection, selective prediction


def _fpr_brute(scores, labels, tpr):
    """Every threshold in turn: the lowest FPR among thresholds flagging >= tpr of the positives."""
    best = 1.0
    for t in np.unique(scores):
        flagged = scores >= t
        if flagged[labels].mean() >= tpr - 1e-12:
            best = min(best, flagged[~labels].mean())
    return best


def _auroc_brute(scores, labels):
    pos, neg = scores[labels], scores[~labels]
    return np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])


@pytest.mark.parametrize("seed", range(5))
def test_auroc_and_fpr95_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 60
    scores = rng.integers(0, 12, n).astype(float) + (rng.random(n) if seed % 2 else 0.0)  # ties when even
    labels = rng.random(n) < 0.4
    assert M.auroc(scores, labels) == pytest.approx(_auroc_brute(scores, labels))
    for tpr in (0.95, 0.5, 1.0):
        assert M.fpr_at_tpr(scores, labels, tpr) == pytest.approx(_fpr_brute(scores, labels, tpr))


def test_fpr95_hand_case():
    # 20 positives scored 1..20: 95 % TPR flags the top 19 (score >= 2); negatives 0, 1.5, 2, 3 -> 2 of 4 >= 2
    scores = np.r_[np.arange(1, 21), [0, 1.5, 2, 3]]
    labels = np.r_[np.ones(20, bool), np.zeros(4, bool)]
    assert M.fpr_at_tpr(scores, labels) == 0.5
    assert math.isnan(M.fpr_at_tpr([1.0, 2.0], [True, True]))


def test_segment_means():
    assert M.segment_means(np.arange(7), 3).tolist() == [1.0, 4.0]  # the tail [6] is dropped
    assert M.segment_means([2.0, 4.0], 5).tolist() == [3.0]


def _aurc_brute(u, wrong):
    order = np.argsort(u, kind="stable")
    return np.mean([wrong[order[:k]].mean() for k in range(1, len(u) + 1)])


def test_risk_coverage_hand_case_and_brute_force():
    # uncertainties 0.1 < 0.2 < 0.3 < 0.4 with errors on the 2nd and 4th: risks 0, 1/2, 1/3, 2/4
    rc = M.risk_coverage([0.3, 0.1, 0.4, 0.2], [False, False, True, True])
    assert rc.coverage.tolist() == [0.25, 0.5, 0.75, 1.0]
    assert rc.risk.tolist() == pytest.approx([0.0, 0.5, 1 / 3, 0.5])
    assert rc.aurc == pytest.approx((0 + 0.5 + 1 / 3 + 0.5) / 4)
    assert rc.aurc_optimal == pytest.approx((0 + 0 + 1 / 3 + 0.5) / 4)  # errors kept last
    rng = np.random.default_rng(0)
    u, wrong = rng.random(200), rng.random(200) < 0.3
    assert M.risk_coverage(u, wrong).aurc == pytest.approx(_aurc_brute(u, wrong))
    # ties are kept together: two groups of equal uncertainty
    tied = M.risk_coverage([1, 1, 2, 2], [True, False, False, True])
    assert tied.coverage.tolist() == [0.5, 1.0] and tied.aurc == pytest.approx(0.5 * 0.5 + 0.5 * 0.5)
