"""CPU threads: the policy (common/threads.py), `--threads` on every command, passive OpenMP waiting."""

import os
import subprocess
import sys

import pytest
import torch

from gptvariants.apps.cli.main import build_parser, main
from gptvariants.common import threads
from gptvariants.common.threads import choose_threads


def test_the_user_decides_first():
    assert choose_threads(3, cores=2, load=9.0, env=None) == (3, "")  # --threads, even above the cores
    assert choose_threads(None, cores=2, load=9.0, env="2") == (None, "")  # OMP_NUM_THREADS: torch's own


@pytest.mark.parametrize("load", [None, 0.0, 0.49])
def test_a_quiet_machine_keeps_torchs_default(load):
    assert choose_threads(None, cores=8, load=load, env=None) == (None, "")
    assert choose_threads(None, cores=8, load=load, env="") == (None, "")


@pytest.mark.parametrize(
    ("cores", "load", "expected"),
    [(2, 0.6, 1), (2, 1.0, 1), (2, 5.3, 1), (8, 3.0, 5), (8, 7.9, 1), (16, 2.4, 14), (8, 0.8, 7)],
)
def test_a_busy_machine_leaves_the_loaded_cores_and_says_so(cores, load, expected):
    n, note = choose_threads(None, cores=cores, load=load, env=None)
    assert n == expected
    assert f"load average {load:.1f} on {cores} cores" in note and f"using {expected} thread" in note
    assert "--threads N" in note


def test_a_load_that_rounds_to_all_cores_changes_nothing():
    assert choose_threads(None, cores=2, load=0.5, env=None) == (None, "")
    assert choose_threads(None, cores=16, load=0.7, env=None) == (15, choose_threads(None, 16, 0.7, None)[1])


ARGVS = [["--threads", "2", "variants"], ["variants", "--threads=2"], ["variants", "--threads", "2"]]


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    "argv", [["--threads", "2", "variants"], ["variants", "--threads=2"], ["variants", "--threads", "2"]]
)
def test_threads_option_on_gptv_and_every_command(argv, restore_threads, monkeypatch, capsys):
    monkeypatch.setattr(threads, "load_average", lambda: 9.0)  # the user's choice wins over a busy machine
    torch.set_num_threads(1)
    assert main(argv) == 0
    assert torch.get_num_threads() == 2 and "busy" not in capsys.readouterr().err


def test_every_subcommand_takes_threads():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        assert "--threads" in p._option_string_actions, name
    with pytest.raises(SystemExit):
        parser.parse_args(["variants", "--threads", "0"])


def test_busy_machine_note(restore_threads, monkeypatch, capsys):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "load_average", lambda: 5.0)
    torch.set_num_threads(2)
    assert main(["variants"]) == 0  # no tensor work: the count is set, no word about it
    assert torch.get_num_threads() == 1 and capsys.readouterr().err == ""
    torch.set_num_threads(2)
    assert main(["sample", "--ckpt", "/nonexistent-run"]) == 2
    err = capsys.readouterr().err
    assert torch.get_num_threads() == 1
    assert "gptv sample: note: the machine is busy (load average 5.0 on 2 cores): using 1 thread instead of 2" in err


def test_the_cli_sets_passive_waiting_before_torch_loads():
    code = (
        "import os, sys; import gptvariants.apps.cli.main; print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["PASSIVE", "True"]
    loaded = [line.split("|")[-1].strip() for line in out.stderr.splitlines() if "|" in line]
    assert loaded.index("gptvariants.common.threads") < loaded.index("torch")  # set before torch was imported
    env["OMP_WAIT_POLICY"] = "ACTIVE"  # the environment's own choice stays
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split()[0] == "ACTIVE"
