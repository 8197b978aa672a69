"""The gptv command: bad input gives a clear, specific error (exit 2), never a traceback."""

import argparse
import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import tiny_overrides

import gptvariants.apps.cli.main as cli_main
from gptvariants.apps.cli.main import main
from gptvariants.common.errors import InputError, UnavailableError
from gptvariants.data.sources import split_source


def _err(capsys, argv):
    code = main(argv)
    return code, capsys.readouterr().err


def test_missing_data_folder(capsys, tmp_path):
    code, err = _err(capsys, ["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")])
    assert code == 2 and "does not exist" in err and "gptv prepare" in err


def test_empty_data_folder(capsys, tmp_path):
    (tmp_path / "d").mkdir()
    code, err = _err(capsys, ["train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r")])
    assert code == 2 and "meta.json" in err


def test_unknown_variant_and_key(capsys, tiny_data, tmp_path):
    code, err = _err(capsys, ["train", "--variant", "softmax", "--data", str(tiny_data), "--out", str(tmp_path / "r")])
    assert code == 2 and "unknown variant 'softmax'" in err and "baseline" in err
    code, err = _err(capsys, ["train", "--data", str(tiny_data), "--out", str(tmp_path / "r"), "--learnig_rate=1"])
    assert code == 2 and "learning_rate" in err


def test_block_size_larger_than_data(capsys, tiny_data, tmp_path):
    code, err = _err(capsys, ["train", "--data", str(tiny_data), "--out", str(tmp_path / "r"), "--block_size=100000"])
    assert code == 2 and "block_size 100000 is larger than the train split" in err


def test_missing_targets(capsys, tiny_data, tmp_path):
    code, err = _err(
        capsys, ["train", "--variant", "sig", "--data", str(tiny_data), "--out", str(tmp_path / "r"), "--targets=nope"]
    )
    assert code == 2 and "gptv targets" in err


def test_non_utf8_text(capsys, tmp_path):
    f = tmp_path / "bad.txt"
    f.write_bytes(b"hello \xff world")
    code, err = _err(capsys, ["prepare", f"text:{f}", "--out", str(tmp_path / "d")])
    assert code == 2 and "offset 6" in err and "--errors replace" in err
    assert main(["prepare", f"text:{f}", "--out", str(tmp_path / "d"), "--errors", "replace"]) == 0


def test_variants_listing(capsys):
    assert main(["variants"]) == 0
    out = capsys.readouterr().out
    for name in ("baseline", "smooth", "bayes", "sig", "sig-reg", "sig-pw", "bayes-sig"):
        assert name in out


# ----------------------------------------------------------------------------- parser habits


def _subparsers():
    from gptvariants.apps.cli.main import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, action.choices


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("gptv ")


def test_every_option_takes_both_spellings():
    _, subs = _subparsers()
    multi = 0
    for name, p in subs.items():
        for action in p._actions:
            for option in action.option_strings:
                if option.startswith("--") and ("-" in option[2:] or "_" in option[2:]):
                    multi += 1
                    for spelling in ("--" + option[2:].replace("-", "_"), "--" + option[2:].replace("_", "-")):
                        assert p._option_string_actions[spelling] is action, (name, spelling)
    assert multi >= 20
    parser, _ = _subparsers()
    args = parser.parse_args(["sample", "--ckpt", "r", "--max_new_tokens=20", "--num_samples", "3", "--top-k", "5"])
    assert (args.max_new_tokens, args.num_samples, args.top_k) == (20, 3, 5)
    args = parser.parse_args(["prepare", "text:x", "--out", "o", "--val_fraction", "0.2", "--num-proc", "2"])
    assert (args.val_fraction, args.num_proc) == (0.2, 2)


@pytest.mark.parametrize(
    "command,expected",
    [
        ("sample", ["--max-new-tokens MAX_NEW_TOKENS", "(default: 200)", "(default: 1.0)"]),
        ("eval", ["(default: 100)", "(default: 64)", "(default: 0.5)"]),
        ("targets", ["(default: 50)", "(default: 32)", "(default: auto)"]),
        ("prepare", ["(default: 1337)", "(default: strict)"]),
        ("experiment", ["(default: 1337)"]),
    ],
)
def test_help_shows_defaults(capsys, command, expected):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    for text in expected:
        assert text in " ".join(out.split()), (command, text)


def test_parse_errors_are_one_line(capsys):
    assert main(["prepare", "synthetic", "--out", "x", "--seed", "-1"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "gptv prepare: error: argument --seed: expected an integer >= 0, got '-1' (see `gptv prepare --help`)\n"
    )
    assert main(["prepare", "synthetic", "--out", "x", "--val-fraction", "1"]) == 2
    assert "expected a number in (0, 1), got '1'" in capsys.readouterr().err


def test_a_closed_pipe_ends_quietly(tmp_path):
    # the reader goes away before the command writes (`gptv ... | head -c 0`)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gptvariants", "variants"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1 and err == "", err


# ----------------------------------------------------------------------------- damaged files: one line, no traceback


def _one_line_error(capsys, argv, *needles):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_data):
    run = tmp_path_factory.mktemp("runs") / "r"
    over = [f"--{k}={v}" for k, v in tiny_overrides(tiny_data, run, max_iters=4, eval_interval=2).items()]
    assert main(["train", "--variant", "smooth", *over]) == 0
    return run


@pytest.mark.parametrize(
    "pointer,message",
    [
        ("[1, 2]", "checkpoint.json: expected a JSON object, found list [1, 2]"),
        ('{"dir": null, "step": 4}', "checkpoint.json: 'dir' expected a string, got None"),
        ('{"dir": "../../etc", "step": 4}', "'dir' must name a checkpoint folder inside"),
        ('{"dir": "ckpt-00000004", "st', "checkpoint.json: not valid JSON"),
    ],
)
def test_a_damaged_checkpoint_pointer_is_one_line(capsys, tiny_run, tiny_data, tmp_path, pointer, message):
    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    (run / "checkpoint.json").write_text(pointer)
    _one_line_error(capsys, ["sample", "--ckpt", str(run), "--prompt", "a"], "gptv sample: error:", message)
    _one_line_error(capsys, ["eval", "--ckpt", str(run), "--data", str(tiny_data)], "gptv eval: error:", message)
    _one_line_error(capsys, ["train", "--resume", "--out", str(run)], "gptv train: error:", message)


def test_a_damaged_run_tokenizer_is_one_line(capsys, tiny_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    (run / "tokenizer_meta.json").write_text('{"kind": "word"}')
    _one_line_error(capsys, ["sample", "--ckpt", str(run)], "tokenizer_meta.json: the key 'words' is missing")
    (run / "tokenizer_meta.json").write_text('{"kind": "word", "wo')
    _one_line_error(capsys, ["sample", "--ckpt", str(run)], "tokenizer_meta.json: not valid JSON")


def test_damaged_data_files_are_one_line(capsys, tiny_run, tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    arrays = data / "synthetic.safetensors"
    arrays.write_bytes(arrays.read_bytes()[:300])
    _one_line_error(
        capsys,
        ["targets", "--data", str(data), "--teacher", "oracle", "--device", "cpu"],
        f"gptv targets: error: {arrays}: cannot be read",
    )
    _one_line_error(
        capsys,
        ["eval", "--ckpt", str(tiny_run), "--data", str(data), "--num-samples", "0"],
        f"gptv eval: error: {arrays}: cannot be read",
    )
    (data / "meta.json").write_text('{"format": 1, "vocab')
    _one_line_error(
        capsys,
        ["train", "--data", str(data), "--out", str(tmp_path / "r")],
        f"gptv train: error: {data / 'meta.json'}: not valid JSON",
    )


def test_bad_values_fail_before_training(capsys, tiny_data, tmp_path):
    out = str(tmp_path / "r")
    for arg, message in [
        ("--max_iters=1e400", "max_iters expects an integer >= 0, got '1e400'"),
        ("--seed=-1", "seed expects an integer >= 0, got '-1'"),
        ("--n_layer=2.5", "n_layer expects an integer in [1, 1000], got '2.5'"),
    ]:
        _one_line_error(capsys, ["train", "--data", str(tiny_data), "--out", out, arg], message)
    _one_line_error(
        capsys,
        ["train", "--data", str(tiny_data), "--out", out, "--n_layer=1000", "--n_embd=65536", "--n_head=64"],
        "parameters: training needs at least",
    )
    assert not (tmp_path / "r").exists()


def test_cuda_on_a_machine_without_it_is_refused(capsys, tiny_data, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _one_line_error(
        capsys,
        ["train", "--data", str(tiny_data), "--out", str(tmp_path / "r"), "--device=cuda"],
        "device 'cuda' is not available",
    )
    _one_line_error(
        capsys,
        ["targets", "--data", str(tiny_data), "--teacher", "oracle", "--device", "cuda"],
        "argument --device: device 'cuda' is not available",
    )


# ----------------------------------------------------------------------------- resume from the run folder


def test_resume_from_the_run_folder_alone(capsys, tiny_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    assert main(["train", "--resume", "--out", str(run), "--max_iters=6", "--eval_interval=2"]) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "finished at step 6" in out
    saved = json.loads((run / "config.json").read_text())
    assert saved["objective"]["variant"] == "smooth" and saved["train"]["max_iters"] == 6
    _one_line_error(
        capsys,
        ["train", "--resume", "--out", str(run), "--n_embd=64", "--variant", "baseline"],
        "cannot resume",
        "n_embd (saved 32, asked 64): it changes the model's shape",
        "variant (saved 'smooth', asked 'baseline')",
    )
    # a saved config.json seeds a new run
    assert main(["train", "--config", str(run / "config.json"), "--out", str(tmp_path / "new"), "--max_iters=2"]) == 0
    again = json.loads((tmp_path / "new" / "config.json").read_text())
    assert again["objective"]["variant"] == "smooth" and again["model"] == saved["model"]


# ----------------------------------------------------------------------------- several processes


def test_accumulation_fits_the_processes_and_rank_0_alone_speaks(capsys, tiny_data, tmp_path, monkeypatch):
    import gptvariants.apps.cli.train as cli_train
    import gptvariants.train.loop as T

    seen = []
    monkeypatch.setattr(cli_train, "train", lambda cfg, resume=False: seen.append(cfg) or T.TrainResult(tmp_path, 3))
    argv = ["train", "--data", str(tiny_data), "--out", str(tmp_path / "r")]
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        assert main(argv) == 0
        captured = capsys.readouterr()
        assert seen[-1].train.gradient_accumulation_steps == 2
        assert ("rounded up to 2" in captured.err) == (rank == "0") and ("finished" in captured.out) == (rank == "0")
        assert main([*argv, "--n_layer=2.5"]) == 2
        assert (capsys.readouterr().err != "") == (rank == "0")
        assert main(["sample", "--bad-option"]) == 2
        assert (capsys.readouterr().err != "") == (rank == "0")


@pytest.mark.slow
def test_torchrun_with_the_default_accumulation(tiny_data, tmp_path):
    over = [f"--{k}={v}" for k, v in tiny_overrides(tiny_data, tmp_path / "r", max_iters=2, eval_interval=2).items()]
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "gptvariants",
            "train",
            *over,
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("gradient_accumulation_steps 1 rounded up to 2") == 1 and r.stdout.count("finished") == 1


@pytest.mark.parametrize("bug", [ValueError("shape mismatch"), RuntimeError("size of tensor a"), IndexError("index 9")])
def test_an_internal_error_keeps_its_traceback(capsys, monkeypatch, bug):
    """Only the project's errors are the user's; a ValueError/RuntimeError/IndexError is our bug and propagates."""

    def broken(args):
        raise bug

    monkeypatch.setattr(cli_main, "_cmd_variants", broken)
    with pytest.raises(type(bug)):
        main(["variants"])
    assert "error" not in capsys.readouterr().err


def test_an_internal_error_shows_a_traceback_and_no_exit_2(tmp_path):
    """The same through the real entry point: Python prints the traceback and exits 1, not 2."""
    script = (
        "import sys, gptvariants.apps.cli.main as m\n"
        "def broken(args): raise RuntimeError('mat1 and mat2 shapes cannot be multiplied')\n"
        "m._cmd_variants = broken\n"
        "sys.exit(m.main(['variants']))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "mat1 and mat2" in done.stderr


@pytest.mark.parametrize(
    "error",
    [
        InputError("bad value 7"),
        UnavailableError("bad value 7"),
        FileNotFoundError(2, "No such file or directory: bad value 7"),
    ],
)
def test_project_and_os_errors_are_one_line(capsys, monkeypatch, error):
    def mistaken(args):
        raise error

    monkeypatch.setattr(cli_main, "_cmd_variants", mistaken)
    code, err = _err(capsys, ["variants"])
    assert code == 2 and err.startswith("gptv variants: error:") and "bad value 7" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_damaged_run_data_json_names_the_file(tiny_run, tiny_data, tmp_path):
    """Library callers (evaluate, calibrate, the API) get a project error naming data.json, not a JSONDecodeError."""
    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    (run / "data.json").write_text('{"tokenizer": "wo')
    with pytest.raises(InputError, match=r"data.json: not valid JSON"):
        split_source(run, tiny_data, "val")
