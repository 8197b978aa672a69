"""The fault suite: hostile cases that once passed silently, gave a raw error, or ran without bound
(issue 23). Each case must end in a clear, specific error (the project's own types, naming the
value or file) or a correct run; none may traceback, lose data or leave files behind.

Classes: Python API misuse, damaged files (tokenizer, data, teacher sets, checkpoints), TOML
files, ``gptv prepare`` / ``gptv eval`` / ``gptv sample`` inputs. HTTP cases (oversized and
chunked bodies, JSON types, path disclosure) live in test_serve.py with its running app.
"""

from __future__ import annotations

import errno
import json
import re
import shutil
import sys

import numpy as np
import pytest
from conftest import tiny_overrides

from gptvariants.apps.api import load
from gptvariants.apps.cli import evaluate as cli_evaluate
from gptvariants.apps.cli.main import main
from gptvariants.common import atomic
from gptvariants.common.atomic import WriteError
from gptvariants.common.errors import InputError
from gptvariants.core.config import KEYS, ConfigError, load_config
from gptvariants.data.dataset import TokenDataset
from gptvariants.store.checkpoint import checkpoints_intact
from gptvariants.targets.build import build_targets
from gptvariants.targets.selection import _Selector
from gptvariants.train.loop import train
from gptvariants.train.trainlog import Logger


@pytest.fixture(scope="module")
def run(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("faults") / "baseline"
    train(load_config("baseline", overrides=tiny_overrides(tiny_data, out, max_iters=4, eval_interval=4)))
    return out


@pytest.fixture(scope="module")
def lm(run):
    return load(run)


# --- the Python API validates its arguments as the CLI does, with the project's error types --------

API_MISUSE = [
    (dict(max_new_tokens=None), "max_new_tokens: expected an integer >= 0, got None"),
    (dict(max_new_tokens="5"), "max_new_tokens: expected an integer >= 0, got '5' (a str"),
    (dict(max_new_tokens=2.5), "max_new_tokens: expected an integer"),
    (dict(top_k=2.5), "top_k: expected an integer >= 1, got 2.5"),
    (dict(top_k=0), "top_k: expected an integer >= 1, got 0"),
    (dict(seed=-1), "seed: expected an integer >= 0, got -1"),
    (dict(seed="a"), "seed: expected an integer >= 0, got 'a'"),
    (dict(seed=2**70), "seed: expected an integer >= 0, got"),
    (dict(temperature=float("nan")), "temperature: expected a finite number, got nan"),
    (dict(temperature="hot"), "temperature: expected a finite number, got 'hot'"),
    (dict(top_p=0.0), "top_p: expected a number in (0, 1]"),
    (dict(tau=True), "tau: expected a number in [0, 1], got True"),
    (dict(unknown="ignore"), "unknown: expected one of error, skip, got 'ignore'"),
    (dict(stop_tokens=[999]), "stop_tokens: 999 is not a token id of this model"),
    (dict(stop_tokens=[-1]), "stop_tokens: -1 is not a token id"),
    (dict(stop_tokens=["a"]), "stop_tokens: 'a' is not a token id"),
    (dict(mc_samples=-2), "mc_samples must be an integer >= 0 (0 = the point estimate, None = the run's), got -2"),
    (dict(mc_samples="3"), "mc_samples must be an integer >= 0"),
]


@pytest.mark.parametrize(
    "kwargs,message", API_MISUSE, ids=[m.split(":")[0] + str(i) for i, (_, m) in enumerate(API_MISUSE)]
)
def test_api_generate_refuses_bad_arguments(lm, kwargs, message):
    args = {"max_new_tokens": 3, **kwargs}
    with pytest.raises(InputError) as e:
        lm.generate("", args.pop("max_new_tokens"), **args)
    assert message in str(e.value)
    with pytest.raises(InputError, match=re.escape(message.split(":")[0])):  # the same check on the streaming path
        list(
            lm.stream("", kwargs.get("max_new_tokens", 3), **{k: v for k, v in kwargs.items() if k != "max_new_tokens"})
        )


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda lm: lm.generate(5, 3), "prompt: expected a str or a list of str, got int 5"),
        (lambda lm: lm.generate([b"ab"], 3), "prompt: expected a str, got bytes"),
        (lambda lm: lm.generate("", 3, stop=[1]), "stop: expected a string or a list of strings, got [1]"),
        (lambda lm: lm.score(None), "text: expected a str, got NoneType None"),
        (lambda lm: list(lm.stream(["a"], 3)), "prompt: expected a str, got list"),
    ],
)
def test_api_wrong_types_are_project_errors(lm, call, message):
    with pytest.raises(InputError, match=re.escape(message)) as e:
        call(lm)
    assert isinstance(e.value, TypeError)  # still a TypeError for callers that catch one


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(top_n=-1), "top_n: expected an integer >= 0, got -1"),
        (dict(seed=-1), "seed: expected an integer >= 0, got -1"),
        (dict(tau="0.5"), "tau: expected a number in [0, 1], got '0.5' (a str"),
        (dict(slide=0), "slide: expected an integer >= 1, got 0"),
    ],
)
def test_api_score_refuses_bad_arguments(lm, kwargs, message):
    with pytest.raises(InputError) as e:
        lm.score("abc", **kwargs)
    assert message in str(e.value)


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "", "CPU0"])
def test_api_load_refuses_a_bad_device_by_name(run, device):
    with pytest.raises(InputError, match=f"device: expected auto, cpu, cuda, cuda:N or mps, got {device!r}"):
        load(run, device=device)


def test_api_good_arguments_still_work(lm):
    a = lm.generate("", 5, seed=3, top_k=4, stop_tokens=[0])
    assert a == lm.generate("", 5, seed=3, top_k=4.0, stop_tokens=[0])  # 4.0 is the integer 4
    assert isinstance(a, str) and len(lm.score(lm.tokenizer.decode([1, 2, 3]), seed=0, tau=1)) >= 2


def gptv(capsys, *argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``gptv ARGV``."""
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


# --- gptv prepare: checked before --out is created; a failure removes what it created ---------


@pytest.mark.parametrize(
    "source,tokenizer,message",
    [
        ("text:{tmp}/nope.txt", None, "no text file, folder or glob matches"),
        ("enwik8", None, "unknown data source 'enwik8'"),
        ("{tmp}/corpus.txt", None, "to prepare this local file, folder or glob write text:{tmp}/corpus.txt"),
        ("text:{tmp}/corpus.txt", "bpe", "unknown tokenizer spec 'bpe'"),
        ("text:{tmp}/corpus.txt", "sentencepiece", "unknown tokenizer spec 'sentencepiece'"),
        ("text:{tmp}/one.txt", None, "gives 0 train token(s): a dataset needs at least 2 in each split"),
        ("text:{tmp}/binary.txt", None, "is not a text file (a NUL byte"),
        ("synthetic:huge", None, "unknown synthetic preset 'huge'"),
    ],
)
def test_failed_prepare_leaves_no_folder(capsys, tmp_path, source, tokenizer, message):
    (tmp_path / "corpus.txt").write_text("hello world\n" * 20)
    (tmp_path / "one.txt").write_text("x")
    (tmp_path / "binary.txt").write_bytes(b"ab\0cd")
    out = tmp_path / "deep" / "data"
    argv = ["prepare", source.format(tmp=tmp_path), "--out", out] + (["--tokenizer", tokenizer] if tokenizer else [])
    code, _, err = gptv(capsys, *argv)
    assert code == 2 and message.format(tmp=tmp_path) in err and "Traceback" not in err
    assert not (tmp_path / "deep").exists()  # nor the parent it made


def test_prepare_refuses_a_dataset_or_other_files_in_out_without_force(capsys, tmp_path):
    (tmp_path / "corpus.txt").write_text("hello world\n" * 20)
    out = tmp_path / "data"
    assert gptv(capsys, "prepare", f"text:{tmp_path}/corpus.txt", "--out", out)[0] == 0
    before = (out / "train.bin").read_bytes()
    code, _, err = gptv(capsys, "prepare", f"text:{tmp_path}/corpus.txt", "--out", out, "--val-fraction", "0.5")
    assert code == 2 and f"{out} already holds a prepared dataset: pass --force" in err
    assert (out / "train.bin").read_bytes() == before  # untouched
    assert (
        gptv(capsys, "prepare", f"text:{tmp_path}/corpus.txt", "--out", out, "--val-fraction", "0.5", "--force")[0] == 0
    )
    assert len((out / "train.bin").read_bytes()) < len(before)
    code, _, err = gptv(capsys, "prepare", f"text:{tmp_path}/corpus.txt", "--out", tmp_path)  # holds corpus.txt
    assert code == 2 and f"{tmp_path} is not empty (corpus.txt, data)" in err
    code, _, err = gptv(capsys, "prepare", "synthetic:tiny", "--out", tmp_path / "corpus.txt")
    assert code == 2 and f"{tmp_path / 'corpus.txt'} is a file, not a folder" in err and "Errno" not in err
    (tmp_path / "half").mkdir()  # an interrupted prepare's leftovers are taken over
    (tmp_path / "half" / "train.bin").write_bytes(b"\0\0")
    assert gptv(capsys, "prepare", "synthetic:tiny", "--out", tmp_path / "half")[0] == 0


# --- damaged files name the file ---------------------------------------------------------------


@pytest.mark.parametrize(
    "content,message",
    [
        ('{"kind": "char", "chars": ["a", "b"', "not valid JSON"),
        ("[1, 2]", "expected a JSON object, found list"),
        ('{"kind": "char"}', "the key 'chars' is missing"),
        ('{"kind": "char", "chars": 5}', "malformed"),
        ('{"kind": "sentencepiece"}', "unknown tokenizer kind 'sentencepiece'"),
        (b"\xff\xfe", "not UTF-8 text"),
    ],
)
def test_a_damaged_tokenizer_file_is_named(run, tmp_path, content, message):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    path = copy / "tokenizer_meta.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(InputError) as e:
        load(copy)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value)


# --- a full disk says what is intact, never what never existed ---------------------------------


def test_a_failed_first_write_does_not_claim_a_previous_file(tmp_path, monkeypatch):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", full)
    with pytest.raises(WriteError) as e:
        atomic.atomic_write(tmp_path / "config.json", "{}")
    assert str(e.value).endswith("there was no config.json before") and "intact" not in str(e.value)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(WriteError, match="the previous config.json is intact$"):
        atomic.atomic_write(tmp_path / "config.json", "{}")


def test_a_failed_metrics_record_before_any_checkpoint_says_so(tmp_path, run):
    log = object.__new__(Logger)  # only what log() reads: a metrics file that cannot be appended to
    log.enabled, log.tb, log.wandb, log.path = True, None, None, tmp_path / "metrics.jsonl"
    log.path.mkdir()
    with pytest.raises(WriteError) as e:
        log.log({"step": 1, "kind": "train"})
    assert str(e.value).endswith("no checkpoint had been written yet") and "checkpoints are intact" not in str(e.value)
    assert checkpoints_intact(run).startswith("the previous checkpoint (step 4) is intact")


# --- TOML: a key twice or in the wrong table is an error naming the file and both places ---------

TOML_CASES = [
    (
        "n_layer = 1\n\n[model]\nn_layer = 2\n",
        "n_layer is set twice, at the top (line 1) and in [model] (line 4); keep one",
    ),
    ("[train]\nn_layer = 2\n", "n_layer is in [train] (line 2) but belongs in [model]"),
    ("[model]\nlearning_rate = 1e-3\n", "learning_rate is in [model] (line 2) but belongs in [train]"),
    ("[model]\nn_layer = 1\nn_layer = 2\n", "invalid TOML"),
    ("[modle]\nn_layer = 1\n", "unknown table [modle]"),
    ("[model]\nn_layers = 1\n", "unknown config key 'n_layers'; did you mean n_layer"),
    ("n_layer = 2.5\n", "n_layer expects an integer in [1, 1000], got 2.5"),
    ("max_iters = 1e400\n", "max_iters expects an integer"),
]


@pytest.mark.parametrize(
    "text,message", TOML_CASES, ids=[m.split(" ")[0] + str(i) for i, (_, m) in enumerate(TOML_CASES)]
)
def test_bad_toml_files_name_the_file_and_the_place(tmp_path, text, message):
    path = tmp_path / "cfg.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config("baseline", file=path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value), str(e.value)


def test_good_toml_tables_and_saved_config_json_still_load(tmp_path, run):
    path = tmp_path / "cfg.toml"
    path.write_text("max_iters = 7\n[model]\nn_layer = 3\n[train]\nlearning_rate = 0.002\n")
    cfg = load_config("baseline", file=path)
    assert (cfg.model.n_layer, cfg.train.max_iters, cfg.train.learning_rate) == (3, 7, 0.002)
    assert load_config(file=run / "config.json").model.n_layer == 2


# --- teacher sets that cannot train are refused when written and when read ---------------------


@pytest.fixture(scope="module")
def sets_data(tiny_data, tmp_path_factory):
    data = tmp_path_factory.mktemp("sets") / "data"
    shutil.copytree(tiny_data, data)
    build_targets(data, "ngram:2", k=4, progress=False)
    return data


def _damaged(sets_data, tmp_path, damage) -> tuple:
    data = tmp_path / "data"
    shutil.copytree(sets_data, data)
    sets_dir = data / "targets" / "ngram_2"
    meta = json.loads((sets_dir / "meta.json").read_text())
    path = sets_dir / "train.bin"
    sets = np.fromfile(path, dtype=meta["dtype"]).reshape(-1, meta["k"])
    damage(sets)
    sets.tofile(path)
    return data, path


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda s: s.fill(np.iinfo(s.dtype).max), "every candidate set is empty (all padding)"),
        (lambda s: s.__setitem__((7, 0), 300), "candidate id 300 is outside the vocabulary of"),
    ],
)
def test_damaged_teacher_sets_are_refused_when_read(sets_data, tmp_path, damage, message):
    data, path = _damaged(sets_data, tmp_path, damage)
    with pytest.raises(InputError) as e:
        TokenDataset(data).open_sets(path.parent, "train")
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value)
    cfg = load_config("sig", overrides=tiny_overrides(data, tmp_path / "run", max_iters=2, targets="ngram_2"))
    with pytest.raises(InputError, match=re.escape(message)):  # a sig run refuses them before training
        train(cfg)


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda ids, sel: ids.fill(sel.sentinel), "gave an empty set at every position of the train split"),
        (lambda ids, sel: ids.__setitem__((3, 0), sel.t.vocab_size + 5), "outside the vocabulary of"),
    ],
)
def test_teacher_sets_that_cannot_train_are_refused_when_written(tiny_data, tmp_path, monkeypatch, damage, message):
    real = _Selector.chunk

    def chunk(self, *a, **k):
        ids, probs, n = real(self, *a, **k)
        damage(ids, self)
        return ids, probs, n

    monkeypatch.setattr(_Selector, "chunk", chunk)
    with pytest.raises(InputError, match=message):
        build_targets(tiny_data, "ngram:2", out=tmp_path / "sets", k=4, progress=False)


# --- gptv sample: bounded, streamed, and it says which temperature it applies ------------------


def test_sample_refuses_a_huge_token_count_unless_told(capsys, run):
    code, out, err = gptv(capsys, "sample", "--ckpt", run, "--max-new-tokens", "1000000000000", "--device", "cpu")
    assert code == 2 and out == ""
    assert "--max-new-tokens 1,000,000,000,000 is over the bound of 20,000 tokens; pass --allow-long" in err


def test_sample_streams_one_sample_as_it_is_generated(capsys, run, lm, monkeypatch):
    writes: list[str] = []
    real = sys.stdout.write
    monkeypatch.setattr(sys.stdout, "write", lambda s: writes.append(s) or real(s))
    code, out, err = gptv(capsys, "sample", "--ckpt", run, "--max-new-tokens", "20", "--seed", "5", "--device", "cpu")
    assert code == 0
    expected = lm.generate("", 20, seed=5)
    assert out == expected + "\n"  # the same text as the batched path gives
    assert len([w for w in writes if w]) >= 10  # written token by token, not at the end


def test_sample_streaming_cuts_at_a_stop_string_like_the_batched_path(capsys, run, lm):
    full = lm.generate("", 30, seed=2)
    stop = full[10:12]
    code, out, _ = gptv(
        capsys, "sample", "--ckpt", run, "--max-new-tokens", "30", "--seed", "2", "--stop", stop, "--device", "cpu"
    )
    assert code == 0 and out == lm.generate("", 30, seed=2, stop=stop) + "\n" and stop not in out


def test_sample_and_eval_headers_name_the_applied_temperature(capsys, run, tmp_path):
    calibrated = tmp_path / "run"
    shutil.copytree(run, calibrated)
    code, _, err = gptv(capsys, "sample", "--ckpt", calibrated, "--max-new-tokens", "3", "--device", "cpu")
    assert code == 0 and "prediction: method default" in err and "temperature 1 (none fitted" in err
    (calibrated / "calibration.json").write_text(json.dumps({"temperature": {"default": 0.908}}))
    code, _, err = gptv(capsys, "sample", "--ckpt", calibrated, "--max-new-tokens", "3", "--device", "cpu")
    assert code == 0 and "temperature T = 0.908 (fitted by gptv calibrate; --no-temperature ignores it)" in err
    args = ("sample", "--ckpt", calibrated, "--max-new-tokens", "3", "--device", "cpu", "--no-temperature")
    assert "temperature off (--no-temperature)" in gptv(capsys, *args)[2]
    code, out, err = gptv(capsys, "eval", "--ckpt", calibrated, "--num-samples", "0", "--device", "cpu")
    assert code == 0 and "prediction: method default" in out + err and "T = 0.908" in out + err


# --- gptv eval: every input checked before the first expensive step ----------------------------


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--ood", "text:{tmp}/nope.txt"], "no text file, folder or glob matches '{tmp}/nope.txt'"),
        (["--ood", "{tmp}"], "has no meta.json"),
        (["--ood", "{tmp}/a.txt"], "is neither a prepared data folder, text:PATH nor synthetic?shift=S (for a text"),
        (["--ood", "synthetic?shift=x"], "shift is a number"),
        (["--ood", "synthetic?shfit=0.5"], "unknown option(s) shfit"),
        (["--text", "{tmp}/nope.txt"], "no text file, folder or glob matches"),
    ],
)
def test_eval_refuses_bad_inputs_before_scoring(capsys, run, tmp_path, monkeypatch, extra, message):
    (tmp_path / "a.txt").write_text("some text")
    monkeypatch.setattr(cli_evaluate, "evaluate", lambda *a, **k: pytest.fail("scoring started"))
    argv = ["eval", "--ckpt", run, "--num-samples", "0", *[x.format(tmp=tmp_path) for x in extra]]
    code, _, err = gptv(capsys, *argv)
    assert code == 2 and message.format(tmp=tmp_path) in err and "Traceback" not in err


def test_eval_and_calibrate_default_to_the_runs_data_and_say_when_it_is_gone(capsys, run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    info = json.loads((copy / "data.json").read_text())
    (copy / "data.json").write_text(json.dumps({**info, "path": str(tmp_path / "gone")}))
    for argv in (["eval", "--ckpt", copy], ["calibrate", copy]):
        code, _, err = gptv(capsys, *argv, "--device", "cpu")
        assert (
            code == 2 and f"the run's data folder {tmp_path / 'gone'} (recorded in {copy / 'data.json'}) is gone" in err
        )


# --- messages name real flags; --help-config describes every key ---------------------------------


def test_help_config_describes_every_key_and_shows_a_variants_values(capsys):
    code, out, _ = gptv(capsys, "train", "--help-config")
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert code == 0 and set(lines) == set(KEYS)
    assert not [k for k, line in lines.items() if ": a key of " in line]  # each has its own description
    assert "0.02" in lines["prior_sigma"] and "standard deviation of the prior" in lines["prior_sigma"]
    code, out, _ = gptv(capsys, "train", "--help-config", "--variant", "bayes")
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert code == 0 and out.startswith("config keys of variant bayes")
    assert lines["prior_sigma"].split()[2] == "0.1" and "[bayes; base 0.02]" in lines["prior_sigma"]
    assert "[bayes" not in lines["n_layer"]


def test_the_unknown_character_hint_names_the_cli_flag(capsys, run):
    code, _, err = gptv(capsys, "sample", "--ckpt", run, "--prompt", "\u2603", "--device", "cpu")
    assert code == 2 and "--unknown skip" in err and "unknown='skip'" not in err
    with pytest.raises(InputError, match="unknown='skip'"):  # the Python API keeps its own spelling
        load(run).generate("\u2603", 2)


# --- damaged run and data files: one line naming the file, never a traceback -----------------


def _truncate(path):
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])


def _flip(path):
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


RUN_DAMAGE = [
    ("checkpoint.json", _truncate),
    ("checkpoint.json", lambda p: p.write_text('{"dir": "../elsewhere", "step": 4}')),
    ("config.json", _truncate),
    ("config.json", lambda p: p.write_text("[]")),
    ("tokenizer_meta.json", _truncate),
    ("ckpt/model.safetensors", _truncate),
    ("ckpt/model.safetensors", _flip),
    ("ckpt/state.pt", _truncate),
    ("ckpt/manifest.json", _truncate),
    ("ckpt", shutil.rmtree),
]


@pytest.mark.parametrize("name,damage", RUN_DAMAGE, ids=[f"{n}-{i}" for i, (n, _) in enumerate(RUN_DAMAGE)])
def test_a_damaged_run_is_one_line_naming_it(capsys, run, tmp_path, name, damage):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    ckpt = next(copy.glob("ckpt-*"))
    damage(copy / name.replace("ckpt", ckpt.name, 1))
    code, out, err = gptv(capsys, "sample", "--ckpt", copy, "--max-new-tokens", "2", "--device", "cpu")
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and "Traceback" not in err, err
    assert lines[-1].startswith("gptv sample: error: ") and str(copy) in lines[-1], err


def test_a_checkpoint_without_manifest_loads_with_a_warning(capsys, run, tmp_path):
    """Checkpoints saved before checksums existed still load (on-disk formats stay readable), said once."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (next(copy.glob("ckpt-*")) / "manifest.json").unlink()
    code, out, err = gptv(capsys, "sample", "--ckpt", copy, "--max-new-tokens", "2", "--device", "cpu")
    assert code == 0 and "has no checksums (saved by an older version); loading it unverified" in err


DATA_DAMAGE = [
    ("meta.json", _truncate, "meta.json"),
    ("meta.json", lambda p: p.write_text("{}"), "meta.json"),
    ("train.bin", _truncate, "train.bin"),
    ("tokenizer_meta.json", _truncate, "tokenizer_meta.json"),
    ("val.bin", lambda p: p.unlink(), "val.bin"),
]


@pytest.mark.parametrize("name,damage,named", DATA_DAMAGE, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(DATA_DAMAGE)])
def test_damaged_data_is_refused_before_training(capsys, tiny_data, tmp_path, name, damage, named):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    damage(data / name)
    code, _, err = gptv(capsys, "train", "--data", data, "--out", tmp_path / "run", "--max_iters=1", "--device=cpu")
    assert code == 2 and "Traceback" not in err and str(data / named) in err, err
