"""Generation: cached = uncached under the sliding window, batching, the sampling filters, the
sigmoid and Bayesian modes, the Python API and ``gptv sample``."""

import argparse
import json
import math

import pytest
import torch

from gptvariants.apps.api import LanguageModel, load
from gptvariants.apps.cli.parsers.sample import register_cli
from gptvariants.apps.cli.sample import colour_by_entropy
from gptvariants.core.config import load_config
from gptvariants.core.model import GPT
from gptvariants.data.tokenizers import CharTokenizer
from gptvariants.decode.generate import (
    ContextWindow,
    Decoder,
    Row,
    RowOptions,
    apply_repetition_penalty,
    draw_rows,
    generate,
    predictor_of,
    sampling_probs,
    top_k_filter,
    top_p_filter,
    window_start,
)
from gptvariants.predict.prediction import Prediction
from gptvariants.predict.predictive import Draws, Predictor
from gptvariants.store.checkpoint import CheckpointError, save_checkpoint

MEAN = Prediction(mc_samples=0)  # a Bayesian head's posterior mean: deterministic decoding

BLOCK = 16

CHARS = list("\nabcdefghijklmnopqrstuvwxyz .,")


def tiny(variant: str = "baseline", vocab: int = 40, seed: int = 0, **kw) -> GPT:
    """A random model whose next token depends on its context (GPT-2's small initial weights give
    near-uniform logits, whose argmax is one constant token: tests on it could not fail)."""
    torch.manual_seed(seed)
    cfg = load_config(variant, overrides=dict(n_layer=2, n_head=2, n_embd=32, block_size=BLOCK, vocab_size=vocab, **kw))
    model = GPT(cfg.model, cfg.objective).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and not name.endswith("_rho"):
                p.normal_(0.0, 0.3)
    return model


def varied(tokens: list[int]) -> bool:
    return len(set(tokens)) >= 4


# --------------------------------------------------------------------------------------- windows


def test_window_policy_hand_case():
    # block 8, keep 6: the context grows to 8 tokens, then restarts with the last 6
    starts, s = [], 0
    for n in range(1, 14):
        s = window_start(s, n, 8, 6)
        starts.append(s)
    # n = 9 would be 9 tokens: restart at 9 - 6 = 3; n = 12 would be 12 - 3 = 9: restart at 12 - 6
    assert starts == [0] * 8 + [3, 3, 3, 6, 6]
    assert all(n - st <= 8 for n, st in zip(range(1, 14), starts))


@pytest.mark.parametrize("variant", ["baseline", "sig", "bayes"])
def test_cached_and_uncached_logits_agree_across_slides(variant):
    model = tiny(variant)
    prompt = torch.randint(0, 40, (2, 5), generator=torch.Generator().manual_seed(1))
    feed = torch.randint(0, 40, (30, 2), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        point = Predictor([model], samples=0)
        cached = ContextWindow(point, prompt, use_cache=True)
        plain = ContextWindow(point, prompt, use_cache=False)
        starts = set()
        for tok in feed:
            # mean weights for the Bayesian head: logits() without sampling
            torch.testing.assert_close(
                model.logits(cached.hidden[0]), model.logits(plain.hidden[0]), atol=2e-4, rtol=1e-4
            )
            cached.append(tok)
            plain.append(tok)
            assert cached.starts == plain.starts and max(len(cached.window(r)) for r in range(2)) <= BLOCK
            starts.add(tuple(cached.starts))
    assert len(starts) >= 3  # the window slid at least twice


@pytest.mark.parametrize("variant", ["baseline", "sig", "bayes"])
def test_greedy_cached_equals_uncached(variant):
    model = tiny(variant)
    prompts = [[1, 2, 3], [7] * 20]  # the second is longer than block_size
    a = generate(model, prompts, 30, greedy=True, prediction=MEAN, return_details=True)
    b = generate(model, prompts, 30, greedy=True, prediction=MEAN, use_cache=False, return_details=True)
    for x, y in zip(a, b):
        assert x.tokens == y.tokens and len(x.tokens) == 30 and varied(x.tokens)
        assert x.entropy == pytest.approx(y.entropy, abs=1e-4)
        assert x.prob == pytest.approx(y.prob, abs=1e-5)


def test_batch_of_different_lengths_equals_one_by_one():
    model = tiny()
    prompts = [[5], [1, 2, 3, 4], [9, 8, 7], [3] * 25, [1, 2, 3, 4]]
    batched = generate(model, prompts, 24, greedy=True)
    alone = [generate(model, [p], 24, greedy=True)[0] for p in prompts]
    assert batched == alone and all(map(varied, alone)) and len({tuple(a) for a in alone}) >= 3
    assert generate(model, torch.tensor([[1, 2, 3, 4]]), 24, greedy=True)[0] == alone[1]


def test_seed_makes_sampling_reproducible():
    model = tiny()
    kw = dict(temperature=0.9, top_k=10, top_p=0.95, repetition_penalty=1.2)
    a = generate(model, [[1, 2]] * 3, 20, seed=7, **kw)
    assert a == generate(model, [[1, 2]] * 3, 20, seed=7, **kw)
    assert a != generate(model, [[1, 2]] * 3, 20, seed=8, **kw)


def test_temperature_zero_is_greedy():
    model = tiny()
    assert generate(model, [[3, 4]], 15, temperature=0.0) == generate(model, [[3, 4]], 15, greedy=True)


def test_stop_tokens_end_a_row_and_are_not_returned():
    model = tiny()
    free = generate(model, [[1, 2], [4]], 12, greedy=True, return_details=True)
    assert varied(free[0].tokens)
    stop = free[0].tokens[3]
    out = generate(model, [[1, 2], [4]], 12, greedy=True, stop_tokens=[stop], return_details=True)
    first = free[0].tokens.index(stop)
    assert out[0].tokens == free[0].tokens[:first] and out[0].finish_reason == "stop_token"
    if stop not in free[1].tokens:
        assert out[1].tokens == free[1].tokens and out[1].finish_reason == "length"


# --------------------------------------------------------------------------------------- continuous batching

# 1 to 26 tokens: every row's window slides, most of them at different steps
PROMPTS = [[5], [1, 2, 3, 4, 5, 6, 7], [9, 8, 7], [3, 1] * 13, [2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26]]


@pytest.mark.parametrize("variant", ["baseline", "sig", "bayes"])
def test_rows_of_different_lengths_cached_match_uncached_across_slides(variant):
    model = tiny(variant)
    feed = torch.randint(0, 40, (40, len(PROMPTS)), generator=torch.Generator().manual_seed(3))
    point = Predictor([model], samples=0)
    with torch.no_grad():
        cached = ContextWindow(point, PROMPTS, use_cache=True)
        plain = ContextWindow(point, PROMPTS, use_cache=False)
        some_rows_slid = 0
        for tok in feed:
            torch.testing.assert_close(
                model.logits(cached.hidden[0]), model.logits(plain.hidden[0]), atol=2e-4, rtol=1e-4
            )
            before = list(cached.starts)
            cached.append(tok)
            plain.append(tok)
            assert cached.starts == plain.starts and all(len(cached.window(r)) <= BLOCK for r in range(len(PROMPTS)))
            moved = sum(a != b for a, b in zip(before, cached.starts))
            some_rows_slid += 0 < moved < len(PROMPTS)
    assert some_rows_slid >= 5  # rows slid while others did not


@pytest.mark.parametrize("variant", ["baseline", "sig", "bayes"])
def test_rows_of_different_lengths_decode_as_they_would_alone(variant):
    """Batched and cached (per-row lengths, positions and masks) against each row alone and
    uncached (its window recomputed from scratch each step), across several slides."""
    model = tiny(variant)
    n = 3 * BLOCK
    batched = generate(model, PROMPTS, n, greedy=True, prediction=MEAN, return_details=True)
    for p, got in zip(PROMPTS, batched):
        alone = generate(model, [p], n, greedy=True, prediction=MEAN, use_cache=False, return_details=True)[0]
        assert got.tokens == alone.tokens and varied(got.tokens)
        assert got.prob == pytest.approx(alone.prob, abs=1e-5)
        assert got.entropy == pytest.approx(alone.entropy, abs=1e-4)
    assert generate(model, PROMPTS, n, greedy=True, prediction=MEAN, use_cache=False) == [g.tokens for g in batched]


# Bayesian heads: the posterior mean (0 draws), S draws per step (the default method), one draw per sequence
MODES = {"mean": Prediction(mc_samples=0), "step": Prediction(mc_samples=4), "sequence": Prediction("sequence")}


def _decode(model, mode: str, rows: list[tuple[list[int], dict]], n: int = 24):
    """Each (prompt, options) as a row of one decoder, all joining at the first step."""
    decoder = Decoder(predictor_of(model, MODES[mode]))
    added = [decoder.add(Row(p, RowOptions(n, details=True, **o))) for p, o in rows]
    while decoder.active:
        decoder.step()
    return [r.gen for r in added]


SAMPLED_ROWS = [
    ([1, 2], dict(temperature=0.9, top_k=10, seed=11)),
    ([5, 6, 7, 8], dict(temperature=1.3, top_p=0.9, repetition_penalty=1.3, seed=12)),
    ([3] * 20, dict(greedy=True, seed=15)),  # greedy, but Bayesian step draws are random
    ([4, 4], dict(temperature=0.7, seed=13, sig_mode="set", tau=0.3, top_n=3)),
    ([7, 1, 7], dict(temperature=1.0, seed=14)),
]


@pytest.mark.parametrize(
    "variant,mode", [("baseline", "mean"), ("sig", "mean"), ("bayes", "step"), ("bayes", "sequence")]
)
def test_a_seeded_row_samples_the_same_tokens_whatever_its_batch(variant, mode):
    """Each row its own options and its own generator: its tokens (and its Bayesian draws) do
    not depend on the rows beside it, nor on its place in the batch."""
    model = tiny(variant)
    with torch.no_grad():
        if variant == "bayes":
            model.head.weight_rho.fill_(math.log(math.expm1(0.3)))  # draws that differ
    batch = _decode(model, mode, SAMPLED_ROWS)
    other = _decode(model, mode, SAMPLED_ROWS[::-1] + [([2, 2, 2], dict(temperature=2.0, seed=99))])[:-1][::-1]
    for row, got, again in zip(SAMPLED_ROWS, batch, other):
        alone = _decode(model, mode, [row])[0]
        assert got.tokens == alone.tokens == again.tokens
        assert got.prob == pytest.approx(alone.prob, abs=1e-5) and again.prob == pytest.approx(alone.prob, abs=1e-5)
    assert all(varied(g.tokens) for g in batch)
    assert _decode(model, mode, [(SAMPLED_ROWS[0][0], {**SAMPLED_ROWS[0][1], "seed": 0})])[0].tokens != batch[0].tokens


def test_a_row_added_mid_way_decodes_as_it_would_alone():
    model = tiny()
    decoder = Decoder(predictor_of(model))
    first = decoder.add(Row([1, 2, 3], RowOptions(3 * BLOCK, greedy=True)))
    short = decoder.add(Row([6, 6], RowOptions(5, temperature=0.8, seed=1)))
    for _ in range(9):
        decoder.step()
    assert short.done and short.gen.finish_reason == "length" and len(decoder.rows) == 1
    late = decoder.add(Row(list(range(1, 30)), RowOptions(2 * BLOCK, temperature=0.8, top_k=10, seed=3, details=True)))
    cancelled = decoder.add(Row([4], RowOptions(50, greedy=True)))
    decoder.step()
    cancelled.cancel()
    while decoder.active:
        decoder.step()
    assert cancelled.gen.finish_reason == "cancelled" and len(cancelled.gen.tokens) == 1
    assert first.gen.tokens == generate(model, [[1, 2, 3]], 3 * BLOCK, greedy=True)[0]
    assert short.gen.tokens == generate(model, [[6, 6]], 5, temperature=0.8, seed=1)[0]
    alone = generate(model, [list(range(1, 30))], 2 * BLOCK, temperature=0.8, top_k=10, seed=3, return_details=True)[0]
    assert late.gen.tokens == alone.tokens and varied(alone.tokens)
    assert late.gen.prob == pytest.approx(alone.prob, abs=1e-5)


def test_ensembles_and_mc_dropout_decode_rows_of_different_lengths():
    """Predictors with several backbone passes, each with its own per-row cache."""
    a, b = tiny(seed=0), tiny(seed=1)
    ensemble = Predictor([a, b])
    batched = generate(ensemble, PROMPTS, 2 * BLOCK, greedy=True, return_details=True)
    for p, got in zip(PROMPTS, batched):
        alone = generate(ensemble, [p], 2 * BLOCK, greedy=True, use_cache=False, return_details=True)[0]
        assert got.tokens == alone.tokens and got.mi == pytest.approx(alone.mi, abs=1e-5)
    dropout = tiny(dropout=0.2)
    runs = [
        generate(Predictor([dropout], dropout_samples=3, seed=0), PROMPTS, 20, seed=5, return_details=True)
        for _ in range(2)
    ]
    assert [g.tokens for g in runs[0]] == [g.tokens for g in runs[1]]  # seeded: reproducible
    assert all(min(g.mi) > 0 for g in runs[0])


# --------------------------------------------------------------------------------------- filters


def test_top_k_top_p_temperature_on_a_hand_distribution():
    p = torch.tensor([[0.5, 0.25, 0.125, 0.0625, 0.0625]])
    scores = p.log()
    assert torch.isinf(top_k_filter(scores, 2)).tolist() == [[False, False, True, True, True]]
    ties = top_k_filter(scores, 4)  # the 4th and 5th tie: both kept
    assert not torch.isinf(ties).any()
    # nucleus: the smallest prefix of the sorted distribution whose mass reaches p
    assert torch.isinf(top_p_filter(scores, 0.75)).tolist() == [[False, False, True, True, True]]
    assert torch.isinf(top_p_filter(scores, 0.7)).tolist() == [[False, False, True, True, True]]
    assert torch.isinf(top_p_filter(scores, 0.76)).tolist() == [[False, False, False, True, True]]
    assert torch.isinf(top_p_filter(scores, 0.3)).tolist() == [[False, True, True, True, True]]
    # order-independent: shuffled vocabulary, same kept set
    perm = torch.tensor([3, 0, 4, 2, 1])
    assert torch.equal(top_p_filter(scores[:, perm], 0.75), top_p_filter(scores, 0.75)[:, perm])
    # temperature: p^(1/T) renormalised
    t2 = sampling_probs(scores, temperature=2.0)
    assert torch.allclose(t2, p.sqrt() / p.sqrt().sum())
    assert torch.allclose(sampling_probs(scores, 1.0, top_k=2), torch.tensor([[2 / 3, 1 / 3, 0, 0, 0]]))
    assert torch.allclose(sampling_probs(scores, 1.0, top_p=0.75), torch.tensor([[2 / 3, 1 / 3, 0, 0, 0]]))
    with pytest.raises(ValueError, match="greedy"):
        sampling_probs(scores, 0.0)
    # one value per row: row 0 keeps 1 token / p 0.3, row 1 keeps 4 / everything
    two = scores.expand(2, -1)
    assert torch.isinf(top_k_filter(two, torch.tensor([[1], [4]]))).tolist() == [
        [False, True, True, True, True],
        [False, False, False, False, False],
    ]
    assert torch.isinf(top_p_filter(two, torch.tensor([[0.3], [1.0]]))).tolist() == [
        [False, True, True, True, True],
        [False, False, False, False, False],
    ]
    per_row = sampling_probs(two, torch.tensor([[2.0], [1.0]]))
    assert torch.allclose(per_row, torch.cat([t2, p]))


def test_draw_rows_follows_each_rows_distribution_from_its_own_generator():
    p = torch.tensor([[0.5, 0.25, 0.0, 0.25], [0.0, 0.0, 1.0, 0.0], [0.1, 0.0, 0.0, 0.0]])  # the last unnormalised
    gens = [torch.Generator().manual_seed(i) for i in range(3 * 4000)]
    drawn = draw_rows(p.repeat(4000, 1), gens).view(4000, 3)
    counts = torch.stack([torch.bincount(drawn[:, r], minlength=4) for r in range(3)]).float() / 4000
    assert torch.allclose(counts[0], p[0], atol=0.03) and counts[1].tolist() == [0, 0, 1, 0] and counts[2, 0] == 1
    again = draw_rows(p[:1], [torch.Generator().manual_seed(0)])  # a row's draw depends on its generator only
    assert again.tolist() == drawn[:1, 0].tolist()


def test_repetition_penalty_hand_case():
    scores = torch.tensor([[2.0, -1.0, 3.0, -0.5]])
    present = torch.tensor([[True, True, False, False]])
    out = apply_repetition_penalty(scores, present, 2.0)
    assert out.tolist() == [[1.0, -2.0, 3.0, -0.5]]
    assert apply_repetition_penalty(scores, present, 1.0) is scores


def test_repetition_penalty_changes_greedy_output():
    model = tiny()
    plain = generate(model, [[1, 2, 3]], 20, greedy=True)[0]
    assert len(set(plain)) < len(plain)  # 20 tokens of 40 repeat some
    strong = generate(model, [[1, 2, 3]], 20, greedy=True, repetition_penalty=1e6)[0]
    assert len(set(strong)) == len(strong) and not {1, 2, 3} & set(strong)


# --------------------------------------------------------------------------------------- sigmoid


def test_sigmoid_normalisation_is_per_row():
    model = tiny("sig")
    z = torch.randn(1, 3, 40) * 3
    log_p = Draws(model.objective.log_probs(z)).log_p
    s = torch.sigmoid(z[0])
    assert torch.allclose(log_p.exp(), s / s.sum(-1, keepdim=True), atol=1e-6)
    # rows are independent: changing row 1 leaves row 0's distribution unchanged
    z2 = z.clone()
    z2[0, 1] += 5.0
    assert torch.allclose(Draws(model.objective.log_probs(z2)).log_p[0], log_p[0])
    # the study's defect, for contrast: normalising over the batch ties the rows together
    study = s / s.sum()
    assert not torch.allclose(study[0], log_p.exp()[0])


def test_sigmoid_set_mode_samples_only_above_tau():
    model = tiny("sig")
    with torch.no_grad():  # z = the bias, whatever the context: sigmoid(z) > 0.5 only for tokens 4 and 9
        model.head.mean_weight.zero_()
        bias = torch.full((40,), -3.0)
        bias[4], bias[9] = 1.0, 2.0
        model.head.bias.copy_(bias)
    out = generate(model, [[1]] * 8, 12, sig_mode="set", tau=0.5, seed=0)
    toks = {t for row in out for t in row}
    assert toks == {4, 9}
    # nothing clears tau: fall back to the argmax of sigmoid(z)
    assert generate(model, [[1]] * 2, 5, sig_mode="set", tau=0.99, seed=0) == [[9] * 5] * 2


# --------------------------------------------------------------------------------------- Bayesian


def test_bayesian_modes_and_mutual_information():
    model = tiny("bayes")
    with torch.no_grad():
        model.head.weight_rho.fill_(math.log(math.expm1(0.5)))  # sigma = 0.5: clearly uncertain
    for method, draws in (("default", 0), ("default", 8), ("sequence", 8)):
        how = Prediction(method, draws)
        g = generate(model, [[1, 2], [3]], 10, prediction=how, seed=0, return_details=True)
        assert all(len(r.tokens) == 10 and all(h >= 0 for h in r.entropy) for r in g)
        assert (g[0].mi is not None) == (method == "default" and draws > 0)
    eight = Prediction(mc_samples=8)
    step = generate(model, [[1, 2]], 10, prediction=eight, seed=0, return_details=True)[0]
    assert min(step.mi) > 1e-3
    with torch.no_grad():
        model.head.weight_rho.fill_(-30.0)  # sigma ~ 1e-13
    certain = generate(model, [[1, 2]], 10, prediction=eight, seed=0, return_details=True)[0]
    assert max(certain.mi) < 1e-6
    with pytest.raises(ValueError, match="Bayesian head"):
        generate(tiny(), [[1]], 2, prediction=Prediction("sequence"))


def test_step_mode_logits_have_the_weight_posterior_moments():
    # z | h ~ N(mu h, sigma^2 h^2) exactly at every position, as if W were drawn (the noise is
    # shared by the positions of one call, so each position is checked on its own)
    model = tiny("bayes", vocab=6)
    with torch.no_grad():
        model.head.weight_rho.uniform_(-2.0, 0.0)
    h = torch.randn(3, 32)
    zs = model.head.logits(h, 20000, torch.Generator().manual_seed(0))
    w = torch.stack([model.head.weights(sample=True)[0] for _ in range(4000)])
    for t in range(3):
        z, zw = zs[:, t], w @ h[t]
        assert torch.allclose(z.mean(0), zw.mean(0), atol=0.15)
        assert torch.allclose(z.std(0), zw.std(0), rtol=0.06)
        assert torch.allclose(z.mean(0), model.logits(h[t : t + 1])[0], atol=0.08)


def test_sequence_mode_keeps_one_draw_and_step_mode_redraws():
    model = tiny("bayes")
    h = torch.randn(3, 32)
    seq = model.head.sequence_sampler(3, torch.Generator().manual_seed(0))
    assert torch.equal(seq(h), seq(h)) and seq(h).shape == (1, 3, 40)
    assert not torch.allclose(seq(h), model.logits(h)[None])
    g = torch.Generator().manual_seed(0)
    assert not torch.equal(model.head.logits(h, 4, g), model.head.logits(h, 4, g))


def test_entropy_decomposition_hand_case():
    # two draws, certain of different tokens: H[p] = log 2, E_s H[p_s] = 0, MI = log 2
    log_ps = torch.log(torch.tensor([[[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]]]).clamp_min(1e-30))
    d = Draws(log_ps)
    assert d.entropy().item() == pytest.approx(math.log(2), abs=1e-6)
    assert d.expected_entropy().item() == pytest.approx(0.0, abs=1e-6)
    assert d.mutual_information().item() == pytest.approx(math.log(2), abs=1e-6)
    # identical draws of (1/2, 1/4, 1/4): MI = 0, both entropies 1.5 log 2
    same = torch.tensor([0.5, 0.25, 0.25]).log().expand(3, 1, 3)
    d = Draws(same)
    assert d.entropy().item() == pytest.approx(1.5 * math.log(2), abs=1e-6)
    assert d.expected_entropy().item() == pytest.approx(1.5 * math.log(2), abs=1e-6)
    assert d.mutual_information().item() == pytest.approx(0.0, abs=1e-6)


# --------------------------------------------------------------------------------------- run folder, API, CLI


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder (checkpoint, config, char tokenizer) of an untrained model: no training needed."""
    run = tmp_path_factory.mktemp("run")
    tok = CharTokenizer(CHARS)
    torch.manual_seed(0)
    cfg = load_config(
        "baseline", overrides=dict(n_layer=2, n_head=2, n_embd=32, block_size=BLOCK, vocab_size=tok.vocab_size)
    )
    save_checkpoint(run, GPT(cfg.model, cfg.objective), {"step": 1, "config": cfg.to_dict()})
    cfg.save(run / "config.json")
    tok.save(run)
    return run


def sample_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="gptv")
    register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["sample", *argv])
    return args.func(args)


def test_cli_json_round_trips(run_dir, capsys):
    assert (
        sample_cli(
            [
                "--ckpt",
                str(run_dir),
                "--prompt",
                "ab",
                "--num-samples",
                "2",
                "--max-new-tokens",
                "7",
                "--json",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    for k, line in enumerate(lines):
        rec = json.loads(line)
        assert rec["prompt"] == "ab" and rec["sample"] == k and len(rec["tokens"]) == 7
        assert "".join(t["text"] for t in rec["tokens"]) == rec["completion"]
        for t in rec["tokens"]:
            assert set(t) == {"id", "text", "prob", "logprob", "entropy"}
            assert 0 < t["prob"] <= 1 and 0 <= t["entropy"] <= math.log(len(CHARS)) + 1e-5


def test_cli_bayesian_json_has_mutual_information(tmp_path, capsys):
    tok = CharTokenizer(CHARS)
    cfg = load_config(
        "bayes", overrides=dict(n_layer=1, n_head=2, n_embd=16, block_size=BLOCK, vocab_size=tok.vocab_size)
    )
    model = GPT(cfg.model, cfg.objective)
    with torch.no_grad():
        model.head.weight_rho.fill_(math.log(math.expm1(2.0)))  # wide posterior: the draws disagree
    save_checkpoint(tmp_path, model, {"step": 1, "config": cfg.to_dict()})
    tok.save(tmp_path)
    sample_cli(["--ckpt", str(tmp_path), "--max-new-tokens", "4", "--json", "--mc-samples", "4"])
    rec = json.loads(capsys.readouterr().out)
    assert len(rec["tokens"]) == 4 and all(t["mi"] > 1e-3 for t in rec["tokens"])
    sample_cli(["--ckpt", str(tmp_path), "--max-new-tokens", "4", "--json"])  # the run's predictive: MC draws
    assert all(t["mi"] > 1e-3 for t in json.loads(capsys.readouterr().out)["tokens"])
    sample_cli(["--ckpt", str(tmp_path), "--max-new-tokens", "4", "--json", "--mc-samples", "0"])  # one draw, no MI
    assert all("mi" not in t for t in json.loads(capsys.readouterr().out)["tokens"])


def test_cli_plain_text_and_uncertainty_colours(run_dir, capsys):
    sample_cli(["--ckpt", str(run_dir), "--prompt", "ab", "--max-new-tokens", "5", "--greedy", "--show-uncertainty"])
    captured = capsys.readouterr()
    assert captured.out.startswith("ab") and "\033[" not in captured.out  # not a terminal: plain text, and why
    assert "stdout is not a terminal" in captured.err
    sample_cli(
        [
            "--ckpt",
            str(run_dir),
            "--prompt",
            "ab",
            "--max-new-tokens",
            "5",
            "--greedy",
            "--show-uncertainty",
            "--color",
            "always",
        ]
    )
    captured = capsys.readouterr()
    assert "\033[3" in captured.out and "entropy / log V" in captured.err  # colours and their legend
    coloured = colour_by_entropy([{"text": "x", "entropy": 0.0}, {"text": "y", "entropy": 10.0}], 30)
    assert coloured == "\033[32mx\033[0m\033[31my\033[0m"


def test_empty_prompt_starts_from_token_zero_without_eot(run_dir):
    lm = load(run_dir)
    assert lm.tokenizer.eot_token is None and lm.encode_prompt("") == [0]
    model = lm.model
    expected = generate(model, [[0]], 6, greedy=True)[0]
    assert lm.generate("", 6, greedy=True) == lm.tokenizer.decode(expected)


def test_unknown_characters_error_or_skip(run_dir, capsys):
    with pytest.raises(ValueError, match="not in the char vocabulary"):
        sample_cli(["--ckpt", str(run_dir), "--prompt", "abc€Z", "--max-new-tokens", "2"])
    sample_cli(["--ckpt", str(run_dir), "--prompt", "abc€Z", "--max-new-tokens", "2", "--unknown", "skip", "--greedy"])
    lm = load(run_dir)
    assert capsys.readouterr().out.strip().startswith("abc€Z")
    assert lm.encode_prompt("abc€Z", unknown="skip") == lm.tokenizer.encode("abc")


def test_overlong_prompt_is_cut_with_a_warning(run_dir, capsys):
    long = "abcdefghij" * 3
    sample_cli(["--ckpt", str(run_dir), "--prompt", long, "--max-new-tokens", "3", "--greedy"])
    err = capsys.readouterr().err
    assert f"longer than block_size {BLOCK}" in err and f"last {BLOCK} tokens" in err
    lm = load(run_dir)
    with pytest.warns(UserWarning, match="block_size"):
        ids = lm.encode_prompt(long)
    assert ids == lm.tokenizer.encode(long[-BLOCK:])


def test_missing_and_half_written_checkpoints_are_clear_errors(run_dir, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="checkpoint.json is missing"):
        sample_cli(["--ckpt", str(tmp_path), "--max-new-tokens", "2"])
    import shutil

    half = tmp_path / "half"
    shutil.copytree(run_dir, half)
    for f in half.glob("ckpt-*/model.safetensors"):
        f.unlink()
    with pytest.raises(CheckpointError, match="incomplete: model.safetensors is missing"):
        load(half)


def test_stop_strings_cut_the_text(run_dir):
    lm = load(run_dir)
    free = lm.generate_details("ab", 12, greedy=True)
    stop = free.text[4]
    cut = lm.generate_details("ab", 12, greedy=True, stop=[stop])
    assert cut.text == free.text[: free.text.index(stop)] and cut.finish_reason == "stop_string"
    assert "".join(t.text for t in cut.tokens) == cut.text


def test_score_matches_generation_probabilities_across_slides(run_dir):
    lm = load(run_dir)
    res = lm.generate_details("ab", 3 * BLOCK, greedy=True)
    records = lm.score("ab" + res.text)  # no EOT in a char vocabulary: tokens 1.. are scored
    assert len(records) == 1 + len(res.tokens)
    tail = records[1:]
    assert [r.id for r in tail] == [t.id for t in res.tokens]
    assert [r.logprob for r in tail] == pytest.approx([t.logprob for t in res.tokens], abs=1e-4)
    assert [r.entropy for r in tail] == pytest.approx([t.entropy for t in res.tokens], abs=1e-4)


def test_language_model_on_a_bayesian_head_scores_with_mutual_information():
    tok = CharTokenizer(CHARS)
    model = tiny("bayes", vocab=tok.vocab_size)
    with torch.no_grad():
        model.head.weight_rho.fill_(math.log(math.expm1(0.5)))
    lm = LanguageModel(model, load_config("bayes"), tok)
    recs = lm.score("hello world", mc_samples=4, seed=0)
    assert "".join(r.text for r in recs) == "ello world"
    assert all(r.mi is not None and r.mi > 1e-3 for r in recs)
    full = lm.score("hello world", mc_samples=4, seed=0, top_n=3)
    assert [r.logprob for r in full] == [r.logprob for r in recs]  # same seed, same draws
    assert all(len(r.top) == 3 and len(r.draws) == 4 for r in full)
    assert all(r.prob == pytest.approx(sum(r.draws) / 4, rel=1e-4) for r in full)  # p = mean of the draws
    assert all(r.mi is None for r in lm.score("hello world", mc_samples=0))


def test_word_tokenizer_starts_from_eot_and_keeps_spaces(tmp_path):
    from gptvariants.data.tokenizers import WordTokenizer

    tok = WordTokenizer(["the", "cat", "sat", "on", "mat"])
    cfg = load_config(
        "baseline", overrides=dict(n_layer=1, n_head=2, n_embd=16, block_size=BLOCK, vocab_size=tok.vocab_size)
    )
    lm = LanguageModel(tiny(vocab=tok.vocab_size), cfg, tok)
    assert lm.encode_prompt("") == [tok.eot_token]
    res = lm.generate_details("the cat", 6, greedy=True, stop_at_eot=False)
    assert "".join(t.text for t in res.tokens) == res.text
    assert ("the cat" + res.text).split() == tok.decode(tok.encode("the cat") + [t.id for t in res.tokens]).split()
    assert res.text.startswith(" ") or res.text.startswith("\n")


def test_score_many_equals_each_text_alone(run_dir):
    lm = load(run_dir)
    texts = ["ab cd", "a", "hello world, " * 5, "", "xyz." * 3]
    together = lm.score_many(texts, top_n=3)
    assert [len(r) for r in together] == [max(0, len(t) - 1) for t in texts]  # char vocabulary, no end-of-text
    for text, recs in zip(texts, together):
        alone = lm.score(text, top_n=3)
        assert [r.id for r in recs] == [r.id for r in alone] and [r.text for r in recs] == [r.text for r in alone]
        assert [r.logprob for r in recs] == pytest.approx([r.logprob for r in alone], abs=1e-5)
        assert [r.top[0][0] for r in recs] == [r.top[0][0] for r in alone]
