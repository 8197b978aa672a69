"""Training: every variant learns, runs resume exactly after SIGKILL, DDP equals one process."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_overrides
from gptvariants.checkpoint import CheckpointError, latest_checkpoint, load_run
from gptvariants.config import load_config
from gptvariants.train import TrainingDiverged, lr_at, train
from gptvariants.variants import REGISTRY


def _evals(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "eval"]


@pytest.mark.parametrize("variant", list(REGISTRY))
def test_every_variant_learns(variant, tiny_data, tmp_path):
    cfg = load_config(variant, overrides=tiny_overrides(tiny_data, tmp_path / variant, max_iters=40, eval_interval=40,
                                                        learning_rate=3e-3))
    result = train(cfg)
    first, last = _evals(tmp_path / variant)[0], _evals(tmp_path / variant)[-1]
    assert first["step"] == 0 and last["step"] == 40
    # plain held-out cross-entropy (normalised sigmoid / posterior mean) falls for every variant
    assert last["val_ce"] < first["val_ce"] - 0.3, (first, last)
    assert result.step == 40
    model, saved = load_run(tmp_path / variant)
    assert saved.objective.variant == variant


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "gptvariants.cli", *args]


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
    proc = subprocess.Popen(_cli(*_train_args(tiny_data, run)), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
    curve = lambda r: [(x["step"], x.get("loss"), x.get("val_ce")) for x in map(json.loads, (r / "metrics.jsonl").read_text().splitlines())]
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
    from gptvariants import model as model_mod

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
    cfg = load_config("baseline", overrides=tiny_overrides(tiny_data, tmp_path / "r", max_iters=50, eval_interval=100, ckpt_interval=10))
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
from gptvariants.config import load_config
from gptvariants.train import train
overrides = dict(arg.split("=", 1) for arg in sys.argv[1:])
res = train(load_config("baseline", overrides=overrides))
rank = int(os.environ.get("RANK", "0"))
save_file({k: v.contiguous() for k, v in res.model.state_dict().items() if k != "transformer.wte.weight"},
          overrides["out_dir"] + f"/rank{rank}.safetensors")
"""


def test_ddp_two_processes_equal_one_process(tiny_data, tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    common = tiny_overrides(tiny_data, tmp_path, max_iters=6, eval_interval=6, gradient_accumulation_steps=4, batch_size=4)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def args(out):
        return [f"{k}={v}" for k, v in {**common, "out_dir": str(out)}.items()]

    subprocess.run([sys.executable, str(script), *args(tmp_path / "single")], check=True, env=env, capture_output=True)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
                        *args(tmp_path / "ddp")], env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    single = load_file(str(tmp_path / "single" / "rank0.safetensors"))
    r0 = load_file(str(tmp_path / "ddp" / "rank0.safetensors"))
    r1 = load_file(str(tmp_path / "ddp" / "rank1.safetensors"))
    for k in single:
        assert torch.equal(r0[k], r1[k]), f"ranks differ in {k}"
        torch.testing.assert_close(r0[k], single[k], rtol=1e-4, atol=1e-5, msg=f"DDP differs from one process in {k}")
