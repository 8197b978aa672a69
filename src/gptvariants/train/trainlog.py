"""What a training run reports: metrics.jsonl, the progress line or bar, TensorBoard and W&B.

``check_backends`` runs before the run folder is created, so a W&B run that cannot start
(no wandb, no WANDB_API_KEY) fails in one line having touched nothing. ``train_record``
builds each step's record in one place; head statistics belong there.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..common.atomic import atomic_write, reporting_write_failure
from ..common.errors import InputError
from ..common.runtime import Runtime
from ..core.config import Config
from ..store.checkpoint import checkpoints_intact
from ..store.records import METRICS_FILE, read_records

_told: set[str] = set()


def check_backends(cfg: Config) -> None:
    """A one-line ValueError when W&B is asked for but cannot run; never reads a key from a file."""
    if not cfg.train.wandb_log:
        return
    if importlib.util.find_spec("wandb") is None:
        raise InputError(
            "wandb_log=true needs the wandb package: pip install wandb (or pip install 'gptvariants[wandb]')"
        )
    offline = os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun")
    if not offline and not os.environ.get("WANDB_API_KEY"):
        raise InputError(
            "wandb_log=true needs WANDB_API_KEY in the environment (keys are never read from files): "
            "export WANDB_API_KEY=..., or set WANDB_MODE=offline"
        )


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of known GPUs, for MFU; None where unknown (CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in (
        ("H200", 989e12),
        ("H100", 989e12),
        ("A100", 312e12),
        ("L4", 121e12),
        ("A10", 125e12),
        ("V100", 125e12),
        ("4090", 165e12),
    ):
        if key in name:
            return flops
    return None


@dataclass
class StepStats:
    """What one optimizer step measured, on this rank."""

    loss: float  # the full training loss: objective + kl_beta * KL / N, mean over micro-batches
    objective: float  # the objective alone
    kl: float  # KL(q || p) of the head's last draw (0 for deterministic heads)
    lr: float
    grad_norm: float  # before clipping; nan when clipping is off


def train_record(
    step: int, s: StepStats, ms_per_step: float, tokens_per_step: int, model: Any, flops: float | None
) -> tuple[dict[str, Any], str]:
    """(metrics.jsonl record, progress line) of training step ``step``."""
    tps = tokens_per_step / (ms_per_step / 1000)
    rec: dict[str, Any] = {
        "kind": "train",
        "step": step,
        "loss": s.loss,
        "lr": s.lr,
        "grad_norm": s.grad_norm,
        "ms_per_step": ms_per_step,
        "tokens_per_s": tps,
        "tflops": model.estimate_mfu(tps, 1e12),
    }
    if flops:
        rec["mfu"] = model.estimate_mfu(tps, flops)
    line = f"step {step}: loss {s.loss:.4f}"
    if model.bayesian:
        rec.update(objective=s.objective, kl=s.kl, kl_weight=model.kl_weight(step - 1), **model.head.stats())
        line += f" (objective {s.objective:.4f}, kl {s.kl:.4g})"
        if "sigma_mean" in rec:
            line += f", sigma {rec['sigma_mean']:.2e} [{rec['sigma_min']:.1e}, {rec['sigma_max']:.1e}]"
    line += f", {ms_per_step:.1f} ms/step, {tps:,.0f} tok/s" + (f", mfu {rec['mfu'] * 100:.1f}%" if flops else "")
    return rec, line


def startup_summary(cfg: Config, rt: Runtime, model: Any, tokens_per_step: int, start: int) -> str:
    """The line ``gptv train`` opens with: what runs where, and how much of it."""
    threads = torch.get_num_threads()
    where = f"{rt.device}" + (f" x {rt.world} processes" if rt.distributed else "")
    steps = f"steps {start}..{cfg.train.max_iters}" if start else f"{cfg.train.max_iters} steps"
    return (
        f"{cfg.objective.variant}: {_count(model.num_params())} parameters (without position embeddings), "
        f"{where}, {threads} CPU thread{'s' if threads != 1 else ''}, {str(rt.dtype).removeprefix('torch.')}, "
        f"{tokens_per_step:,} tokens per step, {steps}"
    )


def _count(n: int) -> str:
    """31.2k, 1.23M, 124M."""
    return f"{n / 1e3:.1f}k" if n < 1e6 else f"{n / 1e6:.3g}M"


def duration(seconds: float) -> str:
    """'45 s', '2 min 10 s', '1 h 05 min'."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    return f"{s // 60} min {s % 60:02d} s" if s < 3600 else f"{s // 3600} h {s % 3600 // 60:02d} min"


def eta_line(step: int, ms_per_step: float, cfg: Config) -> str:
    """'ETA: about 2 min 10 s for the 1,800 steps left, at 72 ms/step (evaluations not counted)'."""
    left = max(0, cfg.train.max_iters - step)
    return (
        f"ETA: about {duration(left * ms_per_step / 1000)} for the {left:,} steps left, "
        f"at {ms_per_step:.0f} ms/step (evaluations not counted)"
    )


class Logger:
    """metrics.jsonl always; a progress bar in a terminal, plain lines otherwise; TensorBoard and W&B when asked."""

    def __init__(self, run_dir: Path, cfg: Config, rt: Runtime, start_step: int) -> None:
        self.enabled = rt.main
        self.path = run_dir / METRICS_FILE
        self.bar = self.tb = self.wandb = None
        if not self.enabled:
            return
        if start_step > 0 and self.path.exists():  # drop records past the checkpoint: the resumed run rewrites them
            atomic_write(self.path, "".join(line + "\n" for line in read_records(self.path, upto=start_step)))
        elif start_step == 0:
            self.path.unlink(missing_ok=True)
        mode = cfg.train.progress
        if mode == "bar" or (mode == "auto" and sys.stderr.isatty()):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=cfg.train.max_iters, initial=start_step, unit="step", dynamic_ncols=True)
        if cfg.train.tensorboard:
            self.tb = _tensorboard(run_dir)
        if cfg.train.wandb_log:
            import wandb  # check_backends made sure it is there and WANDB_API_KEY is in the environment

            self.wandb = wandb.init(
                project=cfg.train.wandb_project,
                name=cfg.train.wandb_run_name or None,
                config=cfg.to_dict(),
                id=_wandb_id(run_dir),
                resume="allow",
            )
            atomic_write(
                run_dir / WANDB_FILE, json.dumps({"id": self.wandb.id, "project": cfg.train.wandb_project}) + "\n"
            )

    def log(self, record: dict[str, Any], message: str | None = None) -> None:
        if not self.enabled:
            return
        with (
            reporting_write_failure("a metrics record", self.path, lambda: checkpoints_intact(self.path.parent)),
            open(self.path, "a", encoding="utf-8") as f,
        ):
            f.write(json.dumps(record) + "\n")
        step = record["step"]
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(f"{record['kind']}/{k}", v, step)
        if self.wandb is not None:
            self.wandb.log({f"{record['kind']}/{k}": v for k, v in record.items() if k != "kind"}, step=step)
        if message:
            self.say(message)

    def say(self, message: str) -> None:
        """Print a line (above the bar when there is one)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def advance(self, n: int, postfix: str = "") -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix_str(postfix, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


WANDB_FILE = "wandb.json"  # the W&B run id: a resumed run and `gptv eval` log into the same W&B run


def _wandb_id(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / WANDB_FILE).read_text(encoding="utf-8"))["id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def log_eval_scalars(run_dir: Path, cfg: Config, step: int, scalars: dict[str, float]) -> list[str]:
    """Write ``gptv eval``'s scalars into the run's TensorBoard log and W&B run (as training set them
    up), at the checkpoint's step; returns where they went. W&B is skipped, with a word, when its
    package or key is missing now."""
    where = []
    if cfg.train.tensorboard:
        tb = _tensorboard(run_dir)
        if tb is not None:
            for k, v in scalars.items():
                tb.add_scalar(k, v, step)
            tb.close()
            where.append(str(run_dir / "tb"))
    if cfg.train.wandb_log:
        try:
            check_backends(cfg)
        except ValueError as e:
            print(f"gptv eval: not logged to W&B: {e}", file=sys.stderr)
            return where
        import wandb

        run = wandb.init(project=cfg.train.wandb_project, id=_wandb_id(run_dir), resume="allow", config=cfg.to_dict())
        run.log(scalars, step=step)
        run.finish()
        where.append("W&B")
    return where


def _tensorboard(run_dir: Path):
    """A SummaryWriter on RUN/tb, or None with one line (once per process) when TensorBoard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        if "tb" not in _told:
            _told.add("tb")
            print(
                "TensorBoard is not installed, so metrics go to metrics.jsonl only "
                "(pip install tensorboard to get RUN/tb)",
                file=sys.stderr,
                flush=True,
            )
        return None
    return SummaryWriter(str(run_dir / "tb"))
