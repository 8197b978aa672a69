import argparse
import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from gptvariants.apps.cli.parsers.targets import register_cli
from gptvariants.core.config import load_config
from gptvariants.data.dataset import TokenDataset
from gptvariants.data.prepare import prepare
from gptvariants.targets import (
    NgramTeacher,
    build_online_teacher,
    build_targets,
    load_teacher,
    sample_set,
)
from gptvariants.train.loop import train

SENTINEL = np.iinfo(np.uint16).max
TINY = dict(
    n_layer=1,
    n_head=2,
    n_embd=32,
    block_size=32,
    batch_size=4,
    eval_iters=1,
    progress="lines",
    tensorboard=False,
    device="cpu",
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    prepare("synthetic:tiny", out)
    return out


@pytest.fixture(scope="module")
def run_dir(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    train(
        load_config(
            "baseline",
            overrides={**TINY, "data": str(data_dir), "out_dir": str(out), "max_iters": 5, "eval_interval": 5},
        )
    )
    return out


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    out = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=65, n_layer=1, n_head=2, n_embd=32, n_positions=64)).save_pretrained(out)
    return out


def check_sets(data_dir: Path, out: Path, k: int) -> dict:
    """Every stored row: <= k ids, sentinel only at the end, the true next token present."""
    ds = TokenDataset(data_dir)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["k"] == k and meta["dtype"] == "uint16" and meta["data_hash"] == ds.meta["hash"]
    for split in ("train", "val"):
        sets, tokens = ds.open_sets(out, split), np.asarray(ds.split(split))
        assert sets.shape == (len(tokens), k)
        real = sets != SENTINEL
        assert (np.sort(~real, axis=1, kind="stable") == ~real).all()  # padding is a suffix
        assert (sets[:-1] == tokens[1:, None]).any(1).all()  # row i holds tokens[i+1]
        assert (sets[real] < ds.vocab_size).all()
    assert meta["splits"]["train"]["tokens_per_s"] > 0
    return meta


@pytest.mark.parametrize("spec", ["oracle", "ngram:2", "ngram:3", "ckpt", "hf"])
def test_sets_hold_the_true_next_token(spec, data_dir, run_dir, hf_dir, tmp_path):
    spec = {"ckpt": f"ckpt:{run_dir}", "hf": f"hf:{hf_dir}"}.get(spec, spec)
    if spec.startswith("hf:"):
        with pytest.warns(UserWarning, match="no tokenizer"):
            build_targets(data_dir, spec, tmp_path / "t", k=6, progress=False)
    else:
        build_targets(data_dir, spec, tmp_path / "t", k=6, progress=False)
    meta = check_sets(data_dir, tmp_path / "t", 6)
    assert 1.0 < meta["mean_set_size"] <= 6


def test_default_folder_and_training_with_cached_sets(data_dir, tmp_path):
    meta = build_targets(data_dir, "ngram:2", k=4, ratio=0.5, progress=False)
    assert Path(meta["dir"]) == data_dir / "targets" / "ngram_2"
    assert 0.45 < meta["splits"]["train"]["teacher_rows_fraction"] < 0.55
    r = train(
        load_config(
            "sig",
            overrides={
                **TINY,
                "data": str(data_dir),
                "out_dir": str(tmp_path / "run"),
                "max_iters": 3,
                "eval_interval": 3,
                "targets": "ngram_2",
            },
        )
    )
    assert np.isfinite(r.last_eval["val_ce"])


@pytest.mark.parametrize("spec", ["ngram:3", "ckpt"])
def test_interrupted_build_resumes_byte_identical(spec, data_dir, run_dir, tmp_path):
    spec = f"ckpt:{run_dir}" if spec == "ckpt" else spec
    kw = dict(k=5, ratio=0.5, store_probs=True, chunk_size=4096, progress=False)
    build_targets(data_dir, spec, tmp_path / "whole", **kw)

    def stop(split, chunk, n_chunks):
        if split == "train" and chunk == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_targets(data_dir, spec, tmp_path / "cut", on_chunk=stop, **kw)
    assert not (tmp_path / "cut" / "meta.json").exists() and (tmp_path / "cut" / "train.bin.partial").exists()
    with pytest.raises(FileNotFoundError, match="meta.json"):
        TokenDataset(data_dir).open_sets(tmp_path / "cut", "train")
    resumed = []
    build_targets(data_dir, spec, tmp_path / "cut", on_chunk=lambda s, c, n: resumed.append((s, c)), **kw)
    assert resumed[0] == ("train", 5)  # it continued, it did not start over
    for f in ("train.bin", "val.bin", "train.probs.bin", "val.probs.bin"):
        assert (tmp_path / "whole" / f).read_bytes() == (tmp_path / "cut" / f).read_bytes()
    assert not list((tmp_path / "cut").glob("*.partial"))


def test_stored_probs_are_the_teachers(data_dir, tmp_path):
    build_targets(data_dir, "ngram:2", tmp_path / "t", k=4, store_probs=True, progress=False)
    ds = TokenDataset(data_dir)
    sets = ds.open_sets(tmp_path / "t", "val")
    probs = np.memmap(tmp_path / "t" / "val.probs.bin", dtype=np.float16, mode="r", shape=sets.shape)
    teacher = NgramTeacher(2, ds, torch.device("cpu"))
    tokens = np.asarray(ds.split("val"))
    i = np.arange(100, 200)
    dense = teacher.dense(tokens[i, None].astype(np.int64), np.ones(len(i), np.int64))
    np.testing.assert_allclose(
        probs[i].astype(np.float32), np.take_along_axis(dense, sets[i].astype(np.int64), 1), rtol=2e-3
    )


def test_ngram_is_deterministic_and_normalised(data_dir, tmp_path):
    for name in ("a", "b"):
        build_targets(data_dir, "ngram:3", tmp_path / name, k=8, progress=False)
    assert (tmp_path / "a" / "train.bin").read_bytes() == (tmp_path / "b" / "train.bin").read_bytes()
    ds = TokenDataset(data_dir)
    t = NgramTeacher(3, ds, torch.device("cpu"))
    val = np.asarray(ds.split("val"), dtype=np.int64)
    hist, avail = t._history(val, np.arange(500))
    p = t.dense(hist, avail)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    # streaming computes each distinct context once and expands: the same rows as dense
    streamed = torch.cat([q for _, q in t.stream_probs(val, 0, 500)]).numpy()
    np.testing.assert_array_equal(streamed, p)
    ((_, distinct, inverse),) = t.stream_unique(val, 0, 500)
    assert len(distinct) < 400 and inverse.shape == (500,)
    np.testing.assert_allclose(t.prob_of(hist, avail, val[1:501]), p[np.arange(500), val[1:501]], rtol=1e-5)
    # an unseen context falls back to the lower order; seen bigrams get more mass than unseen ones
    train_pairs = set(zip(ds.split("train")[:-1].tolist(), ds.split("train")[1:].tolist()))
    p2 = NgramTeacher(2, ds, torch.device("cpu")).dense(np.array([[val[10]]]), np.array([1]))[0]
    seen = [w for w in range(ds.vocab_size) if (int(val[10]), w) in train_pairs]
    assert p2[seen].min() > p2[[w for w in range(ds.vocab_size) if w not in seen]].max()


def test_oracle_sets_are_the_true_support(data_dir, tmp_path):
    build_targets(data_dir, "oracle", tmp_path / "t", k=65, progress=False)
    ds = TokenDataset(data_dir)
    tokens = np.asarray(ds.split("val"))
    p = ds.synthetic.next_token_probs(tokens)
    sets = ds.open_sets(tmp_path / "t", "val")
    for i in range(0, len(tokens) - 1, 97):
        truth = set(np.flatnonzero(p[i] >= 0.01).tolist()) | {int(tokens[i + 1])}
        assert set(sets[i][sets[i] != SENTINEL].tolist()) == truth
    # capped at k by probability: the 2 most probable others plus the true token
    build_targets(data_dir, "oracle", tmp_path / "k3", k=3, progress=False)
    capped = ds.open_sets(tmp_path / "k3", "val")
    i = 1234
    top = [v for v in np.argsort(-p[i], kind="stable") if v != tokens[i + 1]][:2]
    assert set(capped[i].tolist()) == set(top) | {int(tokens[i + 1])}


def test_sample_set_draws_distinct_tokens_with_the_membership_law():
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([[0.5, 0.3, 0.15, 0.05, 0.0]]).repeat(20000, 1)
    ids, probs, keep = sample_set(p, 3, g)
    assert ids.shape == (20000, 3)
    assert (keep.sort(dim=1, descending=True, stable=True).values == keep).all()  # kept ids are a prefix
    assert not (ids[keep] == 4).any()  # never a zero-probability token
    for r in range(50):
        kept = ids[r][keep[r]].tolist()
        assert len(kept) == len(set(kept)) and set(kept) == set(ids[r].tolist())
    torch.testing.assert_close(probs, p.gather(1, ids))
    member = torch.zeros(20000, 5).scatter_add_(1, ids, keep.float())
    assert member.max() == 1
    torch.testing.assert_close(member.mean(0), 1 - (1 - p[0]) ** 3, atol=0.015, rtol=0)


def test_sampled_sets_train_with_their_readout(data_dir, tmp_path):
    meta = build_targets(data_dir, "oracle", tmp_path / "t", k=6, select="sample", chunk_size=4096, progress=False)
    check_sets(data_dir, tmp_path / "t", 6)
    assert meta["rules"]["select"] == "sample" and 1.0 < meta["mean_set_size"] < 6
    build_targets(data_dir, "oracle", tmp_path / "t2", k=6, select="sample", chunk_size=4096, progress=False)
    assert (tmp_path / "t" / "train.bin").read_bytes() == (tmp_path / "t2" / "train.bin").read_bytes()
    # the oracle's sampled sets: the true token plus draws from the exact distribution
    ds = TokenDataset(data_dir)
    tokens = np.asarray(ds.split("val"))
    p = ds.synthetic.next_token_probs(tokens)
    sets = ds.open_sets(tmp_path / "t", "val")
    for i in range(0, len(tokens) - 1, 89):
        assert all(p[i][v] > 0 for v in sets[i][sets[i] != SENTINEL])
    shutil.copytree(tmp_path / "t", data_dir / "targets" / "sampled")
    base = {**TINY, "data": str(data_dir), "max_iters": 2, "eval_interval": 2, "targets": "sampled"}
    r = train(load_config("sig", overrides={**base, "out_dir": str(tmp_path / "r")}))
    assert r.model.objective.set_draws == 6
    assert json.loads((tmp_path / "r" / "config.json").read_text())["objective"]["set_draws"] == 6
    with pytest.raises(ValueError, match="set_draws=3 does not match the sets, which imply 6"):
        train(load_config("sig", overrides={**base, "out_dir": str(tmp_path / "r3"), "set_draws": 3}))
    # top-k sets and the true token alone keep the study's readout
    r1 = train(load_config("sig", overrides={**base, "out_dir": str(tmp_path / "r1"), "targets": ""}))
    assert r1.model.objective.set_draws == 1
    for bad in (dict(min_prob=0.1), dict(ratio=0.5), dict(top_p=0.9), dict(ppl_filter=50.0)):
        with pytest.raises(ValueError, match="not allowed with it"):
            build_targets(data_dir, "oracle", tmp_path / "bad", k=6, select="sample", progress=False, **bad)
    with pytest.raises(ValueError, match="select must be"):
        build_targets(data_dir, "oracle", tmp_path / "bad", k=6, select="random", progress=False)


def test_top_p_and_min_prob_shrink_the_sets(data_dir, tmp_path):
    with pytest.warns(UserWarning, match="k=20 is 31% of the 65-token vocabulary"):  # sets of 20 with no cut
        full = build_targets(data_dir, "ngram:2", tmp_path / "a", k=20, progress=False)["mean_set_size"]
    nucleus = build_targets(data_dir, "ngram:2", tmp_path / "b", k=20, top_p=0.5, progress=False)["mean_set_size"]
    floor = build_targets(data_dir, "ngram:2", tmp_path / "c", k=20, min_prob=0.05, progress=False)["mean_set_size"]
    assert full == 20 and 1 < nucleus < 10 and 1 < floor < 20


def test_perplexity_filter(data_dir, tmp_path):
    meta = build_targets(data_dir, "ngram:2", tmp_path / "b", k=5, ppl_filter=25.0, ppl_window=6, progress=False)
    ds = TokenDataset(data_dir)
    b = ds.open_sets(tmp_path / "b", "val")
    assert 1 < meta["mean_set_size"] < 5
    tokens = np.asarray(ds.split("val"), dtype=np.int64)
    teacher = NgramTeacher(2, ds, torch.device("cpu"))
    dropped = 0
    for i in range(10, 300):
        y = int(tokens[i + 1])
        p = teacher.dense(tokens[i, None, None], np.array([1]))[0]
        kept = []
        for c in np.argsort(-p, kind="stable")[:5]:
            if c == y:
                continue
            w = tokens[i + 1 - 3 : i + 1 + 3].copy()  # the 6-token window around the substituted token
            w[3] = c
            ppl = torch.exp(-teacher.token_log_probs(torch.from_numpy(w)[None]).mean()).item()
            kept += [int(c)] if ppl <= 25.0 else []
            dropped += ppl > 25.0
        assert set(b[i].tolist()) - {SENTINEL} == set(kept[:4]) | {y}, i
    assert dropped > 100


def test_bad_inputs(data_dir, run_dir, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=re.escape("k: expected an integer in [1, 65], got 66 (the vocabulary size")):
        build_targets(data_dir, "ngram:2", tmp_path / "t", k=66, progress=False)
    for option, value, message in [
        ("ratio", float("nan"), "ratio: expected a number in [0, 1], got nan"),
        ("ppl_filter", float("nan"), "ppl_filter: expected a finite number > 1"),
        ("batch_size", -1, "batch_size: expected an integer >= 0, got -1"),
        ("top_p", 0.0, "top_p: expected a number in (0, 1], got 0.0"),
        ("k", 2.5, "k: expected an integer in [1, 65], got 2.5"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            build_targets(data_dir, "ngram:2", tmp_path / "t", **{"k": 4, option: value}, progress=False)
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(vocab_size=70, n_layer=1, n_head=2, n_embd=32, n_positions=64)).save_pretrained(
        tmp_path / "wide"
    )
    with pytest.raises(ValueError, match="70 tokens, the data 65"):
        build_targets(data_dir, f"hf:{tmp_path / 'wide'}", tmp_path / "t", k=4, progress=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="ckpt:RUN.*ngram:N"):
        build_targets(data_dir, "hf:no-such-org/no-such-model", tmp_path / "t", k=4, progress=False)
    with pytest.raises(ValueError, match="unknown teacher"):
        build_targets(data_dir, "bigram", tmp_path / "t", progress=False)
    # a teacher run trained on other data (another vocabulary)
    text = tmp_path / "a.txt"
    text.write_text("hello world, a short text for a char vocabulary\n" * 40)
    other = tmp_path / "other"
    prepare(f"text:{text}", other)
    with pytest.raises(ValueError, match="trained on data with tokenizer .word."):
        build_targets(other, f"ckpt:{run_dir}", tmp_path / "t", k=4, progress=False)
    with pytest.raises(ValueError, match="needs the synthetic language"):
        build_targets(other, "oracle", tmp_path / "t", k=4, progress=False)
    # sets of other data handed to training: data.open_sets refuses them by hash
    twin = tmp_path / "twin"
    prepare("synthetic:tiny", twin, seed=7)
    build_targets(twin, "ngram:2", twin / "targets" / "x", k=4, progress=False)
    shutil.copytree(twin / "targets" / "x", data_dir / "targets" / "foreign")
    with pytest.raises(ValueError, match="hash mismatch"):
        train(
            load_config(
                "sig",
                overrides={
                    **TINY,
                    "data": str(data_dir),
                    "out_dir": str(tmp_path / "r"),
                    "max_iters": 1,
                    "targets": "foreign",
                },
            )
        )


def test_online_teacher_is_aligned_with_y(data_dir, run_dir):
    ds = TokenDataset(data_dir)
    x, y, _ = ds.windows("val", np.array([0, 500, 3000]), 16)
    sets = build_online_teacher("ngram:2?k=5", ds, torch.device("cpu"))(x)
    assert sets.shape == (3, 16, 5) and sets.dtype == torch.int64
    t = NgramTeacher(2, ds, torch.device("cpu"))
    for b, t_ in [(0, 0), (1, 7), (2, 15)]:
        p = t.dense(np.array([[int(x[b, t_])]]), np.array([1]))[0]  # predicts the token after x[b, t_], i.e. y[b, t_]
        assert set(sets[b, t_].tolist()) == set(np.argsort(-p, kind="stable")[:5].tolist())
    hits = (sets == y[..., None]).any(-1).float().mean().item()
    assert hits > 0.3  # far above chance (5/65): the sets predict y, not x
    # a checkpoint teacher with a nucleus: sets are its top tokens at each position, -1 padded
    fn = build_online_teacher(f"ckpt:{run_dir}?k=8&top_p=0.05", ds, torch.device("cpu"))
    s = fn(x)
    model = fn.teacher.model
    with torch.no_grad():
        probs = model.objective.log_probs(model.logits(model.transformer(x))).exp()
    top = probs.argmax(-1)
    assert (s[..., 0] == top).all() and (s == -1).any()
    with pytest.raises(ValueError, match="unknown teacher option"):
        build_online_teacher("ngram:2?kk=3", ds, torch.device("cpu"))
    # sampled online sets: k - 1 draws, distinct, -1 padded, and the readout's m = k
    fn = build_online_teacher("ngram:2?k=5&select=sample", ds, torch.device("cpu"))
    torch.manual_seed(0)
    s = fn(x)
    assert fn.set_draws == 5 and s.shape == (3, 16, 5) and (s[..., 4] == -1).all()
    for row in s.view(-1, 5):
        kept = row[row >= 0].tolist()
        assert 1 <= len(kept) == len(set(kept))
    with pytest.raises(ValueError, match="drop top_p"):
        build_online_teacher("ngram:2?k=5&select=sample&top_p=0.5", ds, torch.device("cpu"))


def test_top_from_hidden_equals_topk_of_the_probabilities(data_dir, run_dir, hf_dir, tmp_path):
    ds = TokenDataset(data_dir)
    sig_run = tmp_path / "sig"
    train(
        load_config(
            "sig",
            overrides={**TINY, "data": str(data_dir), "out_dir": str(sig_run), "max_iters": 2, "eval_interval": 2},
        )
    )
    x = torch.from_numpy(np.asarray(ds.split("val")[:64], dtype=np.int64)).view(2, 32)
    for spec in (f"ckpt:{run_dir}", f"ckpt:{sig_run}", f"hf:{hf_dir}"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tiny HF model has no tokenizer
            t = load_teacher(spec, ds, torch.device("cpu"))
        with torch.no_grad():
            h = t.hidden(x).reshape(64, -1)
            p, ids = t.top_from_hidden(h, 7)
            ref_p, ref_ids = t.probs_from_hidden(h).topk(7, dim=-1)
        assert (t.softmax_logits(h) is None) == spec.endswith("sig")
        torch.testing.assert_close(p, ref_p, rtol=1e-5, atol=1e-7)
        assert (ids == ref_ids).float().mean() > 0.99  # equal up to ties


def test_training_with_an_online_teacher(data_dir, tmp_path):
    base = {**TINY, "data": str(data_dir), "max_iters": 3, "eval_interval": 3, "log_interval": 1}
    plain = train(load_config("sig", overrides={**base, "out_dir": str(tmp_path / "plain")}))
    taught = train(
        load_config("sig", overrides={**base, "out_dir": str(tmp_path / "taught"), "teacher": "ngram:2?k=5"})
    )

    def loss(r):
        lines = (r.run_dir / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line)["loss"] for line in lines if '"train"' in line]

    # same init and batches: the extra positives raise the step-1 BCE (more terms of -log s(z) ~ log V)
    assert all(np.isfinite(loss(taught))) and loss(taught)[0] > loss(plain)[0] + 1.0
    assert taught.last_eval["val_objective"] > plain.last_eval["val_objective"]


def test_cli(data_dir, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers())
    out = data_dir / "targets" / "cli" / "c"
    args = parser.parse_args(
        [
            "targets",
            "--data",
            str(data_dir),
            "--teacher",
            "ngram:2",
            "--out",
            str(out),
            "--k",
            "3",
            "--ratio",
            "0.5",
            "--device",
            "cpu",
        ]
    )
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "mean set size" in printed and "tokens/s" in printed
    assert json.loads((out / "meta.json").read_text())["rules"]["ratio"] == 0.5
    # the hint names what training finds: the path under DATA/targets
    assert "--targets=cli/c" in printed
    TokenDataset(data_dir).open_sets(data_dir / "targets" / "cli/c", "train")


def test_cli_refuses_bad_values_and_an_out_folder_training_cannot_find(data_dir, tmp_path, capsys):
    from gptvariants.apps.cli.main import main

    base = ["targets", "--data", str(data_dir), "--teacher", "ngram:2", "--device", "cpu"]
    for option, value, message in [
        ("--batch-size", "-1", "expected an integer >= 0, got '-1'"),
        ("--k", "0", "expected an integer >= 1, got '0'"),
        ("--ratio", "nan", "expected a number in [0, 1], got 'nan'"),
        ("--top-p", "0", "expected a number in (0, 1], got '0'"),
        ("--ppl-filter", "1", "expected a finite number > 1, got '1'"),
        ("--ppl-window", "1", "expected an integer >= 2, got '1'"),
        ("--seed", "-1", "expected an integer >= 0, got '-1'"),
        ("--context", "2.5", "expected an integer >= 1, got '2.5'"),
    ]:
        assert main([*base, option, value]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"gptv targets: error: argument {option}: {message}" in err, err
    assert main([*base, "--k", "1", "--select", "sample", "--out", str(tmp_path / "pd" / "t_s1")]) == 2
    err = capsys.readouterr().err
    assert "is outside" in err and f"use --out {data_dir / 'targets' / 't_s1'}" in err
    assert not (tmp_path / "pd").exists()


def test_a_large_k_is_warned_about(data_dir, capsys):
    from gptvariants.apps.cli.main import main

    base = [
        "targets",
        "--data",
        str(data_dir),
        "--teacher",
        "ngram:1",
        "--device",
        "cpu",
        "--out",
        str(data_dir / "targets" / "warn"),
    ]
    assert main([*base, "--k", "40"]) == 0
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if "warning" in line]
    assert warned == [line for line in warned if line.startswith("gptv targets: warning: k=40 is 62% of the 65-token")]
    assert len(warned) == 1
    for quiet in (["--k", "10"], ["--k", "40", "--min-prob", "0.01"], ["--k", "40", "--select", "sample"]):
        assert main([*base, *quiet]) == 0
        assert "warning" not in capsys.readouterr().err
    assert main([*base[:4], "ngram:abc", "--k", "40"]) == 2  # a bad teacher: the error alone
    assert "warning" not in capsys.readouterr().err


def test_progress_without_a_terminal_is_plain_lines(data_dir, tmp_path, capsys, monkeypatch):
    import gptvariants.targets.build as B

    monkeypatch.setattr(B, "PROGRESS_SECONDS", 0.0)
    build_targets(data_dir, "ngram:1", tmp_path / "p", k=3, chunk_size=4096, progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert lines[0].startswith("ngram:1 train: 1/") and lines[-1].startswith("ngram:1 val: ") and "(100%)" in lines[-1]


def test_written_sets_follow_the_umask(data_dir, tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        build_targets(data_dir, "ngram:1", tmp_path / "u", k=3, progress=False)
    finally:
        os.umask(old)
    for name in ("train.bin", "val.bin", "meta.json"):
        assert stat.S_IMODE((tmp_path / "u" / name).stat().st_mode) == 0o644, name


def test_online_teacher_options_are_checked_before_loading(data_dir):
    ds = TokenDataset(data_dir)
    for spec, message in [
        ("ngram:2?k=0", "teacher option k in 'ngram:2?k=0': expected an integer >= 1"),
        ("ngram:2?top_p=nan", "teacher option top_p"),
        ("ngram:2?ratio=2", "teacher option ratio"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            build_online_teacher(spec, ds, torch.device("cpu"))
