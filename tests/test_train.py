"""Training: every variant learns, runs resume exactly after SIGKILL, DDP equals one process."""

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_overrides
from safetensors.torch import load_file

from gptvariants.common.runtime import DeviceError
from gptvariants.core.config import load_config
from gptvariants.core.variants import REGISTRY
from gptvariants.store.checkpoint import CheckpointError, latest_checkpoint, load_run, save_checkpoint
from gptvariants.store.runlock import RunLocked
from gptvariants.train.loop import TrainingDiverged, lr_at, train


def _evals(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "eval"]


@pytest.mark.parametrize("variant", list(REGISTRY))
def test_every_variant_learns(variant, tiny_data, tmp_path):
    cfg = load_config(
        variant,
        overrides=tiny_overrides(tiny_data, tmp_path / variant, max_iters=40, eval_interval=40, learning_rate=3e-3),
    )
    result = train(cfg)
    first, last = _evals(tmp_path / variant)[0], _evals(tmp_path / variant)[-1]
    assert first["step"] == 0 and last["step"] == 40
    # plain held-out cross-entropy (normalised sigmoid / posterior mean) falls for every variant
    assert last["val_ce"] < first["val_ce"] - 0.3, (first, last)
    assert result.step == 40
    model, saved = load_run(tmp_path / variant)
    assert saved.objective.variant == variant


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "gptvariants", *args]


def _train_args(data: Path, out: Path, **kw) -> list[str]:
    o = tiny_overrides(data, out, max_iters=150, eval_interval=50, ckpt_interval=5, dropout=0.1, **kw)
    return ["train", "--variant", "bayes"] + [f"--{k}={v}" for k, v in o.items()]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(run) / "model.safetensors"))


def test_sigkill_then_resume_equals_uninterrupted(tiny_data, tmp_path):
    # Bayesian head + dropout: the RNG streams must resume exactly too
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_cli(*_train_args(tiny_data, tmp_path / "ref")), check=True, env=env, capture_output=True)

    run = tmp_path / "killed"
    proc = subprocess.Popen(
        _cli(*_train_args(tiny_data, run)), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        ptr = run / "checkpoint.json"
        if ptr.exists() and json.loads(ptr.read_text())["step"] >= 25:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads((run / "checkpoint.json").read_text())["step"]
    assert 25 <= killed_at < 150, "the run finished before it could be killed"

    subprocess.run(_cli(*_train_args(tiny_data, run), "--resume"), check=True, env=env, capture_output=True)
    ref, resumed = _weights(tmp_path / "ref"), _weights(run)
    assert ref.keys() == resumed.keys()
    for k in ref:
        assert torch.equal(ref[k], resumed[k]), k

    # the same loss curve, once per step (records past the checkpoint were rewritten, not duplicated)
    def curve(r):
        records = map(json.loads, (r / "metrics.jsonl").read_text().splitlines())
        return [(x["step"], x.get("loss"), x.get("val_ce")) for x in records]

    assert curve(run) == curve(tmp_path / "ref")


def test_ctrl_c_saves_and_resumes(tiny_data, tmp_path):
    run = tmp_path / "run"
    args = _train_args(tiny_data, run)
    args = [a for a in args if not a.startswith("--max_iters")] + ["--max_iters=100000", "--ckpt_interval=1000"]
    proc = subprocess.Popen(_cli(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not (run / "metrics.jsonl").exists():
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    step = json.loads((run / "checkpoint.json").read_text())["step"]
    assert step > 0 and f"stopped at step {step}" in out + err


def test_nan_loss_stops_and_keeps_last_checkpoint(tiny_data, tmp_path, monkeypatch):
    from gptvariants.core import model as model_mod

    real = model_mod.GPT.forward
    calls = {"n": 0}

    def poisoned(self, *a, **kw):
        out = real(self, *a, **kw)
        calls["n"] += 1
        if calls["n"] > 12:  # steps 0..11 fine, then NaN
            out.loss = out.loss * float("nan")
            out.objective = out.objective * float("nan")
        return out

    monkeypatch.setattr(model_mod.GPT, "forward", poisoned)
    cfg = load_config(
        "baseline",
        overrides=tiny_overrides(tiny_data, tmp_path / "r", max_iters=50, eval_interval=100, ckpt_interval=10),
    )
    with pytest.raises(TrainingDiverged, match=r"at step 12.*last good checkpoint \(step 10\)"):
        train(cfg)
    assert json.loads((tmp_path / "r" / "checkpoint.json").read_text())["step"] == 10


def test_resume_refuses_other_variant_and_shape(tiny_data, tmp_path):
    run = tmp_path / "r"
    train(load_config("baseline", overrides=tiny_overrides(tiny_data, run, max_iters=5, eval_interval=5)))
    with pytest.raises(CheckpointError, match="variant 'baseline'"):
        train(load_config("sig", overrides=tiny_overrides(tiny_data, run, max_iters=10, eval_interval=5)), resume=True)
    with pytest.raises(CheckpointError, match="n_embd = 32"):
        train(load_config("baseline", overrides=tiny_overrides(tiny_data, run, max_iters=10, n_embd=64)), resume=True)
    with pytest.raises(CheckpointError, match="already holds a run"):
        train(load_config("baseline", overrides=tiny_overrides(tiny_data, run, max_iters=5)))


def test_lr_schedule_warmup_and_cosine():
    cfg = load_config("baseline", overrides=dict(learning_rate=1.0, min_lr=0.1, warmup_iters=10, max_iters=110))
    assert lr_at(0, cfg) == pytest.approx(1 / 11)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)
    assert lr_at(110, cfg) == pytest.approx(0.1)


DDP_SCRIPT = """
import os, sys
from safetensors.torch import save_file
from gptvariants.core.config import load_config
from gptvariants.train.loop import train
overrides = dict(arg.split("=", 1) for arg in sys.argv[1:])
res = train(load_config("baseline", overrides=overrides))
rank = int(os.environ.get("RANK", "0"))
save_file({k: v.contiguous() for k, v in res.model.state_dict().items() if k != "transformer.wte.weight"},
          overrides["out_dir"] + f"/rank{rank}.safetensors")
"""


def test_ddp_two_processes_equal_one_process(tiny_data, tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    common = tiny_overrides(
        tiny_data, tmp_path, max_iters=6, eval_interval=6, gradient_accumulation_steps=4, batch_size=4
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def args(out):
        return [f"{k}={v}" for k, v in {**common, "out_dir": str(out)}.items()]

    subprocess.run([sys.executable, str(script), *args(tmp_path / "single")], check=True, env=env, capture_output=True)
    r = _torchrun(script, args(tmp_path / "ddp"))
    assert r.returncode == 0, r.stderr[-3000:]
    single = load_file(str(tmp_path / "single" / "rank0.safetensors"))
    r0 = load_file(str(tmp_path / "ddp" / "rank0.safetensors"))
    r1 = load_file(str(tmp_path / "ddp" / "rank1.safetensors"))
    for k in single:
        assert torch.equal(r0[k], r1[k]), f"ranks differ in {k}"
        torch.testing.assert_close(r0[k], single[k], rtol=1e-4, atol=1e-5, msg=f"DDP differs from one process in {k}")


# ----------------------------------------------------------------------------- losing nothing


def _torchrun(script: Path, args: list[str]) -> subprocess.CompletedProcess:
    """``script`` under torchrun with two CPU processes (gloo), one thread each."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), *args]
    return subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=240)


def _snapshot(run: Path) -> dict[str, bytes]:
    """Every file of a run folder (except the lock) and its bytes."""
    return {
        str(p.relative_to(run)): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.name != "train.lock"
    }


def test_max_iters_0_and_short_resume_never_overwrite_a_trained_run(tiny_data, tmp_path, capsys):
    run = tmp_path / "r"
    train(load_config("baseline", overrides=tiny_overrides(tiny_data, run, max_iters=10, eval_interval=5)))
    before = _snapshot(run)
    with pytest.raises(CheckpointError, match="already holds a run"):
        train(load_config("baseline", overrides=tiny_overrides(tiny_data, run, max_iters=0)))
    for max_iters in (0, 5, 10):  # resume at or below the saved step: evaluate and report, write nothing
        res = train(load_config("baseline", overrides=tiny_overrides(tiny_data, run, max_iters=max_iters)), resume=True)
        assert res.step == 10 and math.isfinite(res.last_eval["val_ce"])
        assert "nothing to train, nothing written" in capsys.readouterr().out
    assert _snapshot(run) == before
    assert json.loads((run / "checkpoint.json").read_text())["step"] == 10


def test_fresh_max_iters_0_writes_the_initial_model(tiny_data, tmp_path):
    res = train(load_config("baseline", overrides=tiny_overrides(tiny_data, tmp_path / "r", max_iters=0)))
    assert res.step == 0 and json.loads((tmp_path / "r" / "checkpoint.json").read_text())["step"] == 0


def test_keeps_last_checkpoints_and_the_best(tiny_data, tmp_path):
    run = tmp_path / "r"
    train(
        load_config(
            "baseline",
            overrides=tiny_overrides(
                tiny_data, run, max_iters=30, eval_interval=5, keep_checkpoints=2, learning_rate=3e-2, decay_lr=False
            ),
        )
    )
    evals = {r["step"]: r["val_ce"] for r in _evals(run) if r["step"] > 0}
    best = min(evals, key=evals.get)
    kept = sorted(int(p.name[5:]) for p in run.glob("ckpt-*"))
    assert kept == sorted({25, 30, best}), (kept, evals)


def _private_data(tiny_data: Path, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    return data


def test_damaged_checkpoint_falls_back_and_resumes_exactly(tiny_data, tmp_path, capsys):
    kw = dict(eval_interval=5, decay_lr=False, dropout=0.1)  # constant lr: the schedule does not depend on max_iters
    ref = train(load_config("bayes", overrides=tiny_overrides(tiny_data, tmp_path / "ref", max_iters=25, **kw)))
    run = tmp_path / "r"
    train(load_config("bayes", overrides=tiny_overrides(tiny_data, run, max_iters=20, **kw)))
    state = run / "ckpt-00000020" / "state.pt"
    data = bytearray(state.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # flipped bytes inside a tensor
    state.write_bytes(bytes(data))
    res = train(load_config("bayes", overrides=tiny_overrides(tiny_data, run, max_iters=25, **kw)), resume=True)
    err = capsys.readouterr().err
    assert (
        "ckpt-00000020 is damaged (state.pt does not match its checksum" in err and "resuming from ckpt-00000015" in err
    )
    assert (run / "damaged-ckpt-00000020").is_dir() and res.step == 25
    for (n, a), (_, b) in zip(ref.model.state_dict().items(), res.model.state_dict().items()):
        assert torch.equal(a, b), n


def test_changed_data_is_refused_on_resume(tiny_data, tmp_path):
    data = _private_data(tiny_data, tmp_path)
    run = tmp_path / "r"
    train(load_config("baseline", overrides=tiny_overrides(data, run, max_iters=5, eval_interval=5)))
    train_bin = data / "train.bin"
    os.utime(train_bin)  # touched, same content: the full re-hash agrees and the run resumes
    train(load_config("baseline", overrides=tiny_overrides(data, run, max_iters=10, eval_interval=5)), resume=True)
    ids = np.fromfile(train_bin, dtype=np.uint16)
    np.random.default_rng(0).permutation(ids).tofile(train_bin)  # other valid ids, same size
    with pytest.raises(ValueError, match=r"data in .* changed since ckpt-00000010 was saved \(train.bin"):
        train(load_config("baseline", overrides=tiny_overrides(data, run, max_iters=15, eval_interval=5)), resume=True)


def test_torn_metrics_line_is_repaired_on_resume(tiny_data, tmp_path, capsys):
    run = tmp_path / "r"
    train(load_config("baseline", overrides=tiny_overrides(tiny_data, run, max_iters=10, eval_interval=5)))
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "step": 11, "lo')  # a write cut short by a kill
    train(load_config("baseline", overrides=tiny_overrides(tiny_data, run, max_iters=15, eval_interval=5)), resume=True)
    assert f"{run / 'metrics.jsonl'}: dropped a half-written last line" in capsys.readouterr().err
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 15


def test_second_writer_is_refused_with_pid_and_host(tiny_data, tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from gptvariants.store.runlock import RunLock; "
            "RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(60)",
            str(run),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLocked, match=rf"pid {holder.pid} on host {socket.gethostname()}"):
            train(load_config("baseline", overrides=tiny_overrides(tiny_data, run, max_iters=5)))
        assert sorted(p.name for p in run.iterdir()) == ["train.lock"], "the refused run wrote something"
    finally:
        holder.kill()
        holder.wait()
    train(
        load_config("baseline", overrides=tiny_overrides(tiny_data, run, max_iters=5))
    )  # the stale lock is taken over
    assert f"took over the stale lock of {run} (pid {holder.pid}" in capsys.readouterr().out
    assert not (run / "train.lock").exists()


KILL_IN_SAVE = """
import os, signal, sys
import torch
from gptvariants.apps.cli.main import main
real, calls = torch.save, []
def dying_save(obj, f, *a, **kw):
    calls.append(1)
    if len(calls) == 3:  # the third checkpoint: die with the state file half written
        with open(f, "wb") as fh:
            fh.write(b"PK half a zip")
        os.kill(os.getpid(), signal.SIGKILL)
    return real(obj, f, *a, **kw)
torch.save = dying_save
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_during_save_leaves_a_loadable_run_and_no_strays(tiny_data, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["train", "--variant", "bayes"] + [
        f"--{k}={v}"
        for k, v in tiny_overrides(tiny_data, tmp_path / "x", max_iters=25, eval_interval=5, dropout=0.1).items()
        if k != "out_dir"
    ]
    subprocess.run(_cli(*args, f"--out_dir={tmp_path / 'ref'}"), check=True, env=env, capture_output=True)
    run = tmp_path / "r"
    r = subprocess.run([sys.executable, "-c", KILL_IN_SAVE, *args, f"--out_dir={run}"], env=env, capture_output=True)
    assert r.returncode == -signal.SIGKILL
    strays = [p.name for p in run.iterdir() if p.name.startswith(".")]
    assert strays and all(s.startswith(".ckpt-00000015.") for s in strays) and (run / "train.lock").exists()
    model, _ = load_run(run)  # readers need no lock and see step 10
    assert json.loads((run / "checkpoint.json").read_text())["step"] == 10
    subprocess.run(_cli(*args, f"--out_dir={run}", "--resume"), check=True, env=env, capture_output=True)
    assert not [p.name for p in run.iterdir() if p.name.startswith(".") or p.name == "train.lock"]
    ref, resumed = _weights(tmp_path / "ref"), _weights(run)
    assert all(torch.equal(ref[k], resumed[k]) for k in ref)


def test_sigterm_names_the_step_of_the_value_it_prints(tiny_data, tmp_path):
    run = tmp_path / "run"
    args = [
        a
        for a in _train_args(tiny_data, run)
        if not a.startswith(("--max_iters", "--eval_interval", "--ckpt_interval"))
    ]
    proc = subprocess.Popen(
        _cli(*args, "--max_iters=100000", "--eval_interval=1000", "--ckpt_interval=1000"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    while time.time() < deadline and not (run / "metrics.jsonl").exists():
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    step = json.loads((run / "checkpoint.json").read_text())["step"]
    assert step % 1000, "stopped on an evaluation step; the test needs another moment"
    assert f"stopped at step {step} (last evaluated at step 0: val ce " in out
    assert f"stopped at step {step}: val ce" not in out + err  # the value of step 0 is never labelled as step {step}'s


# ----------------------------------------------------------------------------- correctness of the guard


def test_non_finite_kl_stops_before_the_update(tiny_data, tmp_path):
    # posterior sigma 1e-90 is 0 in float32: KL = inf while the objective is finite
    cfg = load_config(
        "bayes", overrides=tiny_overrides(tiny_data, tmp_path / "r", max_iters=5, posterior_sigma_init=1e-90)
    )
    with pytest.raises(TrainingDiverged, match=r"loss became inf \(objective [0-9.]+, kl inf\) at step 0") as info:
        train(cfg)
    assert "KL is not finite" in str(info.value) and "learning_rate" not in str(info.value)


def test_bayesian_progress_line_and_record_show_kl(tiny_data, tmp_path, capsys):
    train(load_config("bayes", overrides=tiny_overrides(tiny_data, tmp_path / "r", max_iters=5, eval_interval=5)))
    rec = next(
        r for r in map(json.loads, (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"
    )
    assert rec["kl"] > 0 and rec["loss"] == pytest.approx(rec["objective"] + rec["kl"] / 40009 * 1.0, rel=1e-6)
    assert re.search(r"step 5: loss [0-9.]+ \(objective [0-9.]+, kl [0-9.e+]+\)", capsys.readouterr().out)


def test_train_opens_with_a_summary_and_an_eta(tiny_data, tmp_path, capsys, monkeypatch):
    from gptvariants.common import threads

    monkeypatch.setattr(threads, "load_average", lambda: 0.0)  # no busy-machine note (tests/test_threads.py)
    over = tiny_overrides(tiny_data, tmp_path / "r", max_iters=12, eval_interval=12, gradient_accumulation_steps=2)
    result = train(load_config("baseline", overrides=over))
    out = capsys.readouterr().out.splitlines()
    params = result.model.num_params()
    assert out[0] == (
        f"baseline: {params / 1e3:.1f}k parameters (without position embeddings), cpu, 1 CPU thread, float32, "
        f"{8 * 32 * 2:,} tokens per step, 12 steps"
    )
    eta = [line for line in out if line.startswith("ETA")]
    assert len(eta) == 1 and re.fullmatch(r"ETA: about \d+ s for the 7 steps left, at \d+ ms/step .*", eta[0])
    assert out.index(eta[0]) == out.index(next(line for line in out if line.startswith("step 5: loss"))) + 1


def test_durations_read_as_a_person_would_say_them():
    from gptvariants.train.trainlog import duration

    assert [duration(s) for s in (0.4, 59.4, 60, 130, 3599, 3600, 3 * 3600 + 5 * 60 + 9)] == [
        "0 s",
        "59 s",
        "1 min 00 s",
        "2 min 10 s",
        "59 min 59 s",
        "1 h 00 min",
        "3 h 05 min",
    ]


def test_non_finite_state_in_a_checkpoint_is_named_not_the_learning_rate(tiny_data, tmp_path):
    run = tmp_path / "r"
    res = train(load_config("baseline", overrides=tiny_overrides(tiny_data, run, max_iters=10, eval_interval=5)))
    ckpt = latest_checkpoint(run)
    state = torch.load(ckpt / "state.pt", weights_only=True)
    first = next(iter(state["optimizer"]["state"].values()))
    first["exp_avg_sq"].fill_(float("nan"))  # saved that way (checksums match): not damage, bad values
    save_checkpoint(run, res.model, state)
    with pytest.raises(TrainingDiverged, match=r"at step 1[01]") as info:
        train(
            load_config("baseline", overrides=tiny_overrides(tiny_data, run, max_iters=20, eval_interval=5)),
            resume=True,
        )
    msg = str(info.value)
    assert "exp_avg_sq" in msg and "ckpt-00000010" in msg and "earlier checkpoint" in msg and "learning_rate" not in msg


DDP_POISON = """
import os, sys, time
from gptvariants.core import model as model_mod
from gptvariants.core.config import load_config
from gptvariants.train.loop import TrainingDiverged, train
rank, real, calls = int(os.environ["RANK"]), model_mod.GPT.forward, []
def poisoned(self, *a, **kw):
    out = real(self, *a, **kw)
    calls.append(1)
    if rank == 1 and len(calls) > 6:  # rank 1 only, from step 3 (2 micro-batches per step and rank)
        out.loss = out.loss * float("nan")
    return out
model_mod.GPT.forward = poisoned
try:
    train(load_config("baseline", overrides=dict(arg.split("=", 1) for arg in sys.argv[1:])))
except TrainingDiverged as e:
    out = dict(arg.split("=", 1) for arg in sys.argv[1:])["out_dir"]
    with open(f"{out}/rank{rank}.txt", "w") as f:
        f.write(str(e))
    time.sleep(3)  # torchrun stops the other rank once one exits: let it write its message first
    sys.exit(3)
"""


def test_ddp_non_finite_loss_on_one_rank_stops_every_rank(tiny_data, tmp_path):
    script = tmp_path / "poison.py"
    script.write_text(DDP_POISON)
    o = tiny_overrides(
        tiny_data,
        tmp_path / "ddp",
        max_iters=10,
        eval_interval=10,
        gradient_accumulation_steps=4,
        batch_size=4,
        grad_clip=0,
    )
    r = _torchrun(script, [f"{k}={v}" for k, v in o.items()])
    msgs = [(tmp_path / "ddp" / f"rank{i}.txt") for i in (0, 1)]
    assert all(m.exists() for m in msgs), r.stdout + r.stderr[-3000:]
    assert msgs[0].read_text().startswith("the loss became non-finite on another rank at step 3")
    assert msgs[1].read_text().startswith("loss became nan at step 3")


# ----------------------------------------------------------------------------- logging back-ends and devices


def test_wandb_without_package_or_key_fails_before_the_run_folder(tiny_data, tmp_path, monkeypatch):
    run = tmp_path / "r"

    def cfg():
        return load_config("baseline", overrides=tiny_overrides(tiny_data, run, max_iters=2, wandb_log="true"))

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed, even where it is
    with pytest.raises(ValueError, match=r"needs the wandb package: pip install wandb"):
        train(cfg())
    monkeypatch.delitem(sys.modules, "wandb")
    fake = tmp_path / "fake"
    (fake / "wandb").mkdir(parents=True)
    (fake / "wandb" / "__init__.py").write_text(
        "logged = []\nclass _Run:\n    id = 'fake-id'\n    def log(self, d, step): logged.append((step, d))\n"
        "    def finish(self): pass\n"
        "def init(**kw):\n    return _Run()\n"
    )
    monkeypatch.syspath_prepend(str(fake))
    with pytest.raises(ValueError, match=r"needs WANDB_API_KEY in the environment \(keys are never read from files\)"):
        train(cfg())
    assert not run.exists()
    monkeypatch.setenv("WANDB_API_KEY", "test-key")
    monkeypatch.delitem(sys.modules, "wandb", raising=False)
    train(cfg())
    import wandb

    assert [s for s, _ in wandb.logged] == [0, 2, 2]  # eval at 0, train record and eval at 2
    assert json.loads((run / "wandb.json").read_text())["id"] == "fake-id"  # eval and a resume log into this run


def test_missing_tensorboard_is_one_line_not_a_failure(tiny_data, tmp_path, monkeypatch, capsys):
    from gptvariants.train import trainlog

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as when not installed
    monkeypatch.setattr(trainlog, "_told", set())
    for name in ("a", "b"):
        train(
            load_config(
                "baseline", overrides=tiny_overrides(tiny_data, tmp_path / name, max_iters=2, tensorboard="true")
            )
        )
    lines = [line for line in capsys.readouterr().err.splitlines() if "TensorBoard" in line]
    assert lines == [
        "TensorBoard is not installed, so metrics go to metrics.jsonl only (pip install tensorboard to get RUN/tb)"
    ]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_cpu_build_is_one_line_before_anything_is_written(tiny_data, tmp_path):
    with pytest.raises(
        DeviceError, match=r"device 'cuda' asked for, but this PyTorch build .* has no CUDA support"
    ) as info:
        train(load_config("baseline", overrides=tiny_overrides(tiny_data, tmp_path / "r", max_iters=2, device="cuda")))
    assert "\n" not in str(info.value) and not (tmp_path / "r").exists()


def test_checkpoint_write_failure_is_one_cli_line(tiny_data, tmp_path, monkeypatch, capsys):
    from gptvariants.apps.cli.main import main
    from gptvariants.store import checkpoint as ck

    real, calls = ck.torch.save, []

    def fail_second(obj, f, *a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 452864 vs 452756")
        return real(obj, f, *a, **kw)

    monkeypatch.setattr(ck.torch, "save", fail_second)
    o = tiny_overrides(tiny_data, tmp_path / "r", max_iters=10, eval_interval=5)
    assert main(["train"] + [f"--{k}={v}" for k, v in o.items()]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("gptv train")]
    assert len(err) == 1 and "could not write the checkpoint of step 10" in err[0] and "cut short" in err[0]
    assert err[0].endswith("the previous checkpoint (step 5) is intact") and " free on " in err[0]
    assert load_run(tmp_path / "r") and not (tmp_path / "r" / "train.lock").exists()


def test_eval_only_applies_to_the_invocation_that_asks_for_it(tiny_data, tmp_path, capsys):
    """`--eval_only=true` on a resume is never saved: the next resume trains (it used to stay evaluation-only)."""
    from gptvariants.apps.cli.main import main

    run = tmp_path / "r"
    args = [f"--{k}={v}" for k, v in tiny_overrides(tiny_data, run, max_iters=10, eval_interval=5).items()]
    assert main(["train", *args]) == 0
    assert main(["train", "--resume", "--out", str(run), "--eval_only=true"]) == 0
    assert json.loads((run / "config.json").read_text())["train"]["eval_only"] is False
    assert main(["train", "--resume", "--out", str(run), "--max_iters=15"]) == 0
    assert json.loads((run / "checkpoint.json").read_text())["step"] == 15
    # a run saved by a version that persisted the flag trains on too
    saved = json.loads((run / "config.json").read_text())
    saved["train"]["eval_only"] = True
    (run / "config.json").write_text(json.dumps(saved))
    assert main(["train", "--resume", "--out", str(run), "--max_iters=20"]) == 0
    assert json.loads((run / "checkpoint.json").read_text())["step"] == 20
