"""The paths a GPU run takes by default, on the CPU: bf16 autocast for every registered variant
(train, resume, evaluate and sample, losses within ``_close`` of fp32), fused AdamW (the
CPU path too), ``torch.compile`` of the training backbone, and ``benchmarks/gpu.py --smoke``.

The training loop compiles the backbone only (``Trainer``), which every variant shares: its graph
differs between variants only in dropout, so the compile test covers the backbone with dropout
(``baseline-dropout``: its graph holds every op of the others' and the dropout masks) rather than
every variant. They trace through
TorchDynamo and AOTAutograd with the ``aot_eager`` backend: inductor's C++ code generation costs
60-150 s per graph on a loaded 2-core CPU, beyond this suite's budget; set GPTV_TEST_INDUCTOR=1 to
compile with inductor as a GPU run does (benchmarks/gpu.py always does on CUDA).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, tiny_overrides

from gptvariants.core.config import load_config
from gptvariants.core.variants import REGISTRY
from gptvariants.decode.generate import generate
from gptvariants.predict.methods import load_runs
from gptvariants.predict.prediction import Prediction, build_predictor
from gptvariants.train.loop import train

# bf16 autocast against fp32 from the same seed and batches, after a few steps: within 0.05 or 0.5 %
# of the loss, whichever is larger (losses near ln V ~ 4 move ~1e-2, sig-pw's summed BCE ~22 moves
# ~0.06: bf16's 8-bit mantissa in every matmul); a wrong path is off by far more
BF16_LOSS_ATOL, BF16_LOSS_RTOL = 0.05, 0.005


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= max(BF16_LOSS_ATOL, BF16_LOSS_RTOL * abs(a))


STEPS = dict(max_iters=3, eval_interval=3, eval_iters=2, log_interval=1, warmup_iters=2)


def _records(run: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def _train(data: Path, out: Path, variant: str, resume: bool = False, **kw) -> Path:
    train(load_config(variant, overrides=tiny_overrides(data, out, **{**STEPS, **kw})), resume=resume)
    return out


def _close_losses(a: Path, b: Path, differ: bool = False) -> None:
    """The two runs' logged losses agree within ``_close`` (and, with ``differ``, are not all equal:
    the second run did take another numeric path)."""
    pairs = list(zip(_records(a, "train"), _records(b, "train"), strict=True))
    assert not differ or any(ra["loss"] != rb["loss"] for ra, rb in pairs)
    for ra, rb in pairs:
        assert ra["step"] == rb["step"] and _close(ra["loss"], rb["loss"]), (ra, rb)
    ea, eb = _records(a, "eval")[-1], _records(b, "eval")[-1]
    assert _close(ea["val_ce"], eb["val_ce"]), (ea, eb)


@pytest.mark.parametrize("variant", list(REGISTRY))
def test_every_variant_trains_resumes_evaluates_and_samples_in_bf16(variant, tiny_data, tmp_path):
    fp32 = _train(tiny_data, tmp_path / "fp32", variant, dtype="float32")
    bf16 = _train(tiny_data, tmp_path / "bf16", variant, dtype="bfloat16")
    _close_losses(fp32, bf16, differ=True)
    _train(tiny_data, bf16, variant, resume=True, dtype="bfloat16", max_iters=5)
    assert [r["step"] for r in _records(bf16, "train")][-2:] == [4, 5]
    runs = load_runs(bf16)
    x = torch.randint(0, runs[0].model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    y = torch.roll(x, -1, 1)
    nll = {
        d: build_predictor(runs, Prediction(mc_samples=0, dtype=d)).nll(x, y).mean() for d in ("float32", "bfloat16")
    }
    assert _close(nll["float32"], nll["bfloat16"]), nll
    [tokens] = generate(runs[0].model, [[1, 2]], 4, temperature=0.0, prediction=Prediction(dtype="bfloat16"))
    assert len(tokens) == 4


@pytest.fixture
def compile_backend(monkeypatch):
    """torch.compile as the training loop calls it, with aot_eager unless GPTV_TEST_INDUCTOR=1 (module docstring)."""
    if os.environ.get("GPTV_TEST_INDUCTOR") == "1":
        return
    original = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **kw: original(self, backend="aot_eager"))


def test_compiled_backbone_trains_and_resumes_close_to_eager(tiny_data, tmp_path, compile_backend):
    variant = "baseline-dropout"
    eager = _train(tiny_data, tmp_path / "eager", variant, dtype="bfloat16")
    compiled = _train(tiny_data, tmp_path / "compiled", variant, dtype="bfloat16", compile=True)
    _close_losses(eager, compiled)
    _train(tiny_data, compiled, variant, resume=True, dtype="bfloat16", compile=True, max_iters=4)
    assert _records(compiled, "train")[-1]["step"] == 4  # resuming recompiles and continues the run


def test_gpu_benchmark_runs_on_the_cpu_in_smoke_mode(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--device", "cpu", "--smoke"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    for heading in ("## Training step", "## Fused loss memory", "## Generation"):
        assert heading in out.stdout
    assert all(name in out.stdout for name in REGISTRY)
