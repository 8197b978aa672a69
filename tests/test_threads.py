"""CPU threads: the policy (common/threads.py), `--threads` on every command, passive OpenMP waiting."""

import os
import subprocess
import sys

import pytest
import torch

from gptvariants.apps.cli.main import build_parser, main
from gptvariants.common import threads
from gptvariants.common.threads import busy_note


@pytest.mark.parametrize(("cpus", "load"), [(2, None), (2, 0.0), (2, 0.99), (16, 7.9), (1, 0.9)])
def test_no_note_while_half_the_cores_are_free(cpus, load):
    assert busy_note(cpus, cpus, load) == ""


@pytest.mark.parametrize(("cpus", "threads", "load"), [(2, 2, 1.0), (2, 1, 5.3), (16, 16, 8.0), (1, 1, 1.2)])
def test_a_busy_machine_is_named_with_the_threads_used(cpus, threads, load):
    note = busy_note(cpus, threads, load)
    assert note.startswith(f"note: the machine is busy (load average {load:.1f} on {cpus} cores)")
    assert f"using {threads} CPU thread{'s' if threads > 1 else ''} (--threads N to choose)" in note


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    "argv", [["--threads", "2", "variants"], ["variants", "--threads=2"], ["variants", "--threads", "2"]]
)
def test_threads_option_on_gptv_and_every_command(argv, restore_threads):
    torch.set_num_threads(1)
    assert main(argv) == 0
    assert torch.get_num_threads() == 2


def test_every_subcommand_takes_threads():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        assert "--threads" in p._option_string_actions, name
    with pytest.raises(SystemExit):
        parser.parse_args(["variants", "--threads", "0"])


def test_train_names_a_busy_machine_and_keeps_the_thread_count(tiny_data, tmp_path, monkeypatch, capsys):
    from conftest import tiny_overrides

    from gptvariants.core.config import load_config
    from gptvariants.train.loop import train

    monkeypatch.setattr(threads, "load_average", lambda: 5.0)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    over = tiny_overrides(tiny_data, tmp_path / "r", max_iters=2, eval_interval=2, eval_iters=1)
    train(load_config("baseline", overrides=over))
    out = capsys.readouterr().out.splitlines()
    assert torch.get_num_threads() == 1  # conftest's, whatever the load: results do not depend on it
    assert out[1] == (
        "note: the machine is busy (load average 5.0 on 2 cores): steps will be slower and their times noisy; "
        "using 1 CPU thread (--threads N to choose)"
    )
    monkeypatch.setattr(threads, "load_average", lambda: 0.2)
    train(load_config("baseline", overrides={**over, "out_dir": str(tmp_path / "quiet")}))
    assert not any("busy" in line for line in capsys.readouterr().out.splitlines())


@pytest.mark.parametrize(("load", "policy"), [(0.2, None), (1.5, "PASSIVE")])
def test_only_a_busy_machine_gets_passive_waiting(monkeypatch, load, policy):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    threads.prefer_passive_waiting(cpus=2, load=load)
    assert os.environ.get("OMP_WAIT_POLICY") == policy
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's choice wins
    threads.prefer_passive_waiting(cpus=2, load=5.0)
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_the_cli_sets_passive_waiting_before_torch_loads():
    code = (  # a busy machine, as the CLI package sees it on import (os.getloadavg patched first)
        "import os, sys; os.getloadavg = lambda: (9.0, 9.0, 9.0); import gptvariants.apps.cli.main; "
        "print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules); import gptvariants.apps.cli.train"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["PASSIVE", "False"]  # the parser loads no torch; a command does
    loaded = [line.split("|")[-1].strip() for line in out.stderr.splitlines() if "|" in line]
    assert loaded.index("gptvariants.common.threads") < loaded.index("torch")  # set before torch was imported
    env["OMP_WAIT_POLICY"] = "ACTIVE"  # the environment's own choice stays
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split()[0] == "ACTIVE"
