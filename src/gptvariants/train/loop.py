"""The training loop shared by every variant: single process, or DDP under torchrun.

``train`` sets a run up (``startup``: data, lock, model, resume), then ``Trainer`` runs it,
one job per method: one optimizer step (with the all-reduced finite check of the full loss),
logging, periodic evaluation, checkpointing and stop handling.

Determinism: every optimizer step s draws its global batch from a generator seeded by
(seed, s) and reseeds the global RNG from (seed, s, rank) before the forward pass (dropout,
Bayesian weight draws). A run therefore resumes exactly from any checkpoint without
carrying RNG state, and a DDP run over W ranks with G accumulation steps sees the same
global batch as one process with G steps: rank r takes micro-batches r*G/W .. (r+1)*G/W - 1.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from ..common.errors import GptvError
from ..common.runtime import Runtime, all_ranks_any, setup_runtime, step_seed
from ..common.threads import machine_note
from ..core.config import Config
from ..core.model import GPT
from ..predict.predictive import Predictor
from ..store.checkpoint import CheckpointError, pointer_step, save_checkpoint
from .batches import Batches
from .startup import Session, build_model, open_data, run_lock, start_session, write_run_files
from .trainlog import Logger, StepStats, check_backends, eta_line, peak_flops, startup_summary, train_record

__all__ = [
    "Batches",
    "Runtime",
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
    "build_model",
    "estimate_losses",
    "lr_at",
    "setup_runtime",
    "step_seed",
    "train",
]


class TrainingDiverged(GptvError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    last_eval: dict[str, float] = field(
        default_factory=dict
    )  # the evaluation at ``step``; {} when ``step`` was not evaluated
    interrupted: bool = False
    model: GPT | None = None  # the trained model (unwrapped from DDP)
    latest_eval: dict[str, float] = field(default_factory=dict)  # the most recent evaluation, with its "step"

    def summary(self) -> str:
        """'finished at step 60: val ce 2.5340; ...', naming the step of the evaluation when it is an earlier one."""
        ev = self.latest_eval
        if self.last_eval:
            tail = f": val ce {self.last_eval['val_ce']:.4f}"
        elif ev:
            tail = f" (last evaluated at step {ev['step']}: val ce {ev['val_ce']:.4f})"
        else:
            tail = ""
        return f"{'stopped' if self.interrupted else 'finished'} at step {self.step}{tail}; run folder {self.run_dir}"


def train(cfg: Config, resume: bool = False) -> TrainResult:
    """Train ``cfg`` into ``cfg.train.out_dir``; with ``resume`` continue from its newest verified checkpoint exactly.

    Nothing is written before every read-only check passed; the run folder is locked against a
    second writer. ``resume`` with max_iters at or below the checkpoint's step evaluates and
    reports without writing; a fresh run into a folder holding a run is refused. The process's
    allocator is left alone: ``gptv`` tunes it at its entry (``common.allocator``), a notebook may too.
    """
    check_backends(cfg)
    rt = setup_runtime(cfg)
    try:
        data, batches = open_data(cfg, rt)
        with run_lock(Path(cfg.train.out_dir), rt):
            s = start_session(cfg, rt, data, batches, resume)
            if resume and s.start >= cfg.train.max_iters and not cfg.train.eval_only:
                return report_only(s)
            write_run_files(s)
            return Trainer(s).run()
    finally:
        if rt.distributed and dist.is_initialized():
            dist.destroy_process_group()


def report_only(s: Session) -> TrainResult:
    """A resumed run already at or past max_iters: evaluate the checkpoint and say so; write nothing."""
    ev = estimate_losses(s.model, s.batches, s.rt, s.cfg.train.eval_iters)
    if s.rt.main:
        print(
            f"{s.run_dir} is already at step {s.start} (max_iters={s.cfg.train.max_iters}): nothing to train, "
            f"nothing written; val ce {ev['val_ce']:.4f} at step {s.start}",
            flush=True,
        )
    return TrainResult(s.run_dir, s.start, last_eval=ev, model=s.model, latest_eval={"step": s.start, **ev})


def lr_at(step: int, cfg: Config) -> float:
    """Linear warm-up, then cosine decay from learning_rate to min_lr at lr_decay_iters (nanoGPT's schedule)."""
    t = cfg.train
    if not t.decay_lr:
        return t.learning_rate
    decay_iters = t.lr_decay_iters or t.max_iters
    if step < t.warmup_iters:
        return t.learning_rate * (step + 1) / (t.warmup_iters + 1)
    if step >= decay_iters:
        return t.min_lr
    ratio = (step - t.warmup_iters) / max(1, decay_iters - t.warmup_iters)
    return t.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (t.learning_rate - t.min_lr)


@torch.no_grad()
def estimate_losses(model: GPT, batches: Batches, rt: Runtime, iters: int) -> dict[str, float]:
    """Mean over ``iters`` fixed batches per split of (a) the cross-entropy of the run's predictive
    distribution (``predictive.Predictor``: softmax, a sigmoid head's readout, the Monte-Carlo
    mixture of a Bayesian head), so that every variant is on one scale, and (b) the variant's own
    training objective with the point-estimate weights. Draws are seeded: every evaluation of a
    run sees the same noise."""
    model.eval()
    predictor = Predictor([model], seed=0)
    out: dict[str, float] = {}
    for split in ("train", "val"):
        ce, own, count = 0.0, 0.0, 0
        for i in range(rt.rank, iters, rt.world):
            x, y, s = batches.eval_batch(split, i)
            with rt.autocast():
                hs = predictor.encode(x)
                ce += predictor.nll_of(hs, y).mean().item()
                own += model.head.loss(hs[0], model.objective, y, s)[0].item()
            count += 1
        totals = torch.tensor([ce, own, count], dtype=torch.float64, device=rt.device)
        if rt.distributed:
            dist.all_reduce(totals)
        out[f"{split}_ce"] = (totals[0] / totals[2]).item()
        out[f"{split}_objective"] = (totals[1] / totals[2]).item()
    model.train()
    return out


class _StopFlag:
    """First Ctrl-C (or SIGTERM) asks the loop to save and exit at the next step boundary."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True
        print(
            "\ninterrupt received: finishing this step, saving a checkpoint, then stopping (Ctrl-C again to abort)",
            file=sys.stderr,
            flush=True,
        )

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


class _Clock:
    """Wall time per training step, leaving out evaluation and checkpoint time."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.t, self.steps = time.perf_counter(), 0

    def tick(self) -> None:
        self.steps += 1

    def lap(self) -> float:
        """Milliseconds per step since the last lap or reset."""
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        ms = (time.perf_counter() - self.t) * 1000 / max(1, self.steps)
        self.reset()
        return ms


class Trainer:
    """Runs a set-up ``Session`` to max_iters, or until stopped; one job per method."""

    def __init__(self, s: Session) -> None:
        self.s, self.cfg, self.rt = s, s.cfg, s.rt
        if self.cfg.train.compile:
            s.model.transformer.compile()
        self.net = (
            DDP(s.model, device_ids=[self.rt.local_rank] if self.rt.device.type == "cuda" else None)
            if self.rt.distributed
            else s.model
        )
        t = self.cfg.train
        self.G_local = t.gradient_accumulation_steps // self.rt.world
        self.ckpt_interval = t.ckpt_interval or t.eval_interval
        self.tokens_per_step = t.batch_size * self.cfg.model.block_size * t.gradient_accumulation_steps
        self.flops = peak_flops(self.rt.device)
        self.result = TrainResult(s.run_dir, s.start, model=s.model)
        self.clock = _Clock(self.rt.device)
        self.saved_step: int | None = None
        self.told_eta = False
        self.flag = _StopFlag()
        self.logger: Logger  # opened by run()

    def run(self) -> TrainResult:
        with self.flag:
            self.logger = Logger(self.s.run_dir, self.cfg, self.rt, self.s.start)
            self.logger.say(startup_summary(self.cfg, self.rt, self.s.model, self.tokens_per_step, self.s.start))
            note = machine_note() if self.rt.device.type == "cpu" else ""
            if note:
                self.logger.say(note)
            try:
                self._loop()
            finally:
                self.logger.close()
        return self.result

    def _loop(self) -> None:
        step, t = self.s.start, self.cfg.train
        if step == 0 or t.eval_only:  # a resumed run already logged the evaluation at its checkpoint
            self.evaluate(step)
        if t.eval_only:
            return
        self.clock.reset()
        while step < t.max_iters:
            stats, stop = self.step(step)
            step += 1
            self.result.step = step
            self.clock.tick()
            self.log_step(step, stats)
            self.periodic(step)
            if stop:
                self.stop(step)
                return
        if t.max_iters == 0:  # a fresh, untrained run: its checkpoint is the initial model
            self.checkpoint(0)

    def step(self, step: int) -> tuple[StepStats, bool]:
        """One optimizer step; (its stats, whether any rank asked to stop). Raises TrainingDiverged on every
        rank, before the update, when the full loss on any rank or the gradient norm is not finite."""
        s, t = self.s, self.cfg.train
        lr = lr_at(step, self.cfg)
        for group in s.optimizer.param_groups:  # a group's lr_mult (a Bayesian head's rho) scales the schedule
            group["lr"] = lr * group.get("lr_mult", 1.0)
        torch.manual_seed(step_seed(t.seed, step, self.rt.rank, 1))
        loss = objective = kl = 0.0
        for i, (x, y, sets) in enumerate(s.batches.micro_batches(step)):
            # DDP (distributed runs only) syncs gradients on the last micro-batch alone
            sync = self.net.no_sync() if isinstance(self.net, DDP) and i < self.G_local - 1 else nullcontext()
            with sync:
                with self.rt.autocast():
                    out = self.net(x, y, sets, s.batches.n["train"], s.model.kl_weight(step))
                s.scaler.scale(out.loss / self.G_local).backward()
            loss += out.loss.item() / self.G_local
            objective += out.objective.item() / self.G_local
            kl = out.kl.item()
        stats = StepStats(loss, objective, kl, lr, float("nan"))
        bad, stop = all_ranks_any(self.rt, not math.isfinite(loss), self.flag.requested)
        if bad:
            raise self._diverged(step, stats, "loss")
        if t.grad_clip > 0:
            s.scaler.unscale_(s.optimizer)
            stats.grad_norm = torch.nn.utils.clip_grad_norm_(s.model.parameters(), t.grad_clip).item()
            if (
                not math.isfinite(stats.grad_norm) and not s.scaler.is_enabled()
            ):  # fp16's scaler skips such steps itself
                raise self._diverged(step, stats, "gradient norm")
        s.scaler.step(s.optimizer)
        s.scaler.update()
        s.optimizer.zero_grad(set_to_none=True)
        return stats, stop if self.rt.distributed else self.flag.requested

    def log_step(self, step: int, stats: StepStats) -> None:
        """The train record every log_interval steps and at the end; the progress bar every step."""
        t = self.cfg.train
        if step % t.log_interval == 0 or step == t.max_iters:
            ms = self.clock.lap()
            rec, line = train_record(step, stats, ms, self.tokens_per_step, self.s.model, self.flops)
            self.logger.log(rec, None if self.logger.bar is not None else line)
            if not self.told_eta and step < t.max_iters:  # once, from the first timed steps
                self.told_eta = True
                self.logger.say(eta_line(step, ms, self.cfg))
        self.logger.advance(1, f"loss {stats.loss:.4f}" + (f", kl {stats.kl:.4g}" if self.s.model.bayesian else ""))

    def periodic(self, step: int) -> None:
        """Evaluate every eval_interval steps, checkpoint every ckpt_interval steps, both at max_iters."""
        t = self.cfg.train
        final = step == t.max_iters
        evaluated = step % t.eval_interval == 0 or final
        saved = step % self.ckpt_interval == 0 or final
        if evaluated:
            self.evaluate(step)
        if saved:
            self.checkpoint(step)
        if evaluated or saved:  # keep evaluation and checkpoint time out of ms/step
            self.clock.reset()

    def evaluate(self, step: int) -> dict[str, float]:
        ev = estimate_losses(self.s.model, self.s.batches, self.rt, self.cfg.train.eval_iters)
        self.s.best_val = min(self.s.best_val, ev["val_ce"])
        obj = self.cfg.objective.objective
        own = "" if obj == "ce" else f", val {obj} {ev['val_objective']:.4f}"
        self.logger.log(
            {"kind": "eval", "step": step, **ev},
            f"step {step}: val ce {ev['val_ce']:.4f}, train ce {ev['train_ce']:.4f}{own}",
        )
        self.result.last_eval, self.result.latest_eval = ev, {"step": step, **ev}
        return ev

    def checkpoint(self, step: int) -> None:
        """Save on rank 0 (with the val ce when this step was evaluated, for "best"); every rank raises if it failed."""
        error: Exception | None = None
        if self.rt.main:
            ev = self.result.latest_eval
            try:
                save_checkpoint(
                    self.s.run_dir,
                    self.s.model,
                    self.s.state_dict(step),
                    keep=self.cfg.train.keep_checkpoints,
                    val_ce=ev["val_ce"] if ev.get("step") == step else None,
                )
            except (OSError, CheckpointError) as e:
                error = e
        if all_ranks_any(self.rt, error is not None)[0]:
            raise error or CheckpointError(f"rank 0 could not save the checkpoint of step {step}")
        self.saved_step = step

    def stop(self, step: int) -> None:
        """Save (unless just saved); say where the run stopped and the step of its last evaluation."""
        if self.saved_step != step:
            self.checkpoint(step)
        self.result.interrupted = True
        ev = self.result.latest_eval
        if ev.get("step") != step:
            self.result.last_eval = {}
        seen = (
            ""
            if not ev
            else (
                f": val ce {ev['val_ce']:.4f}"
                if ev["step"] == step
                else f" (last evaluated at step {ev['step']}: val ce {ev['val_ce']:.4f})"
            )
        )
        self.logger.log({"kind": "interrupt", "step": step}, f"stopped at step {step}{seen}; resume with --resume")

    def _diverged(self, step: int, stats: StepStats, what: str) -> TrainingDiverged:
        """The error for a non-finite loss or gradient norm, with the likeliest cause."""
        s = self.s
        value = stats.loss if what == "loss" else stats.grad_norm
        parts = f" (objective {stats.objective}, kl {stats.kl})" if s.model.bayesian else ""
        prev = pointer_step(s.run_dir)
        kept = (
            f"The last good checkpoint (step {prev}) in {s.run_dir} is kept."
            if prev is not None
            else "No checkpoint was written yet."
        )
        if math.isfinite(value):  # under DDP: another rank's loss
            return TrainingDiverged(
                f"the loss became non-finite on another rank at step {step}; stopped without "
                f"updating the weights. {kept} That rank's message names the cause."
            )
        return TrainingDiverged(
            f"{what} became {value}{parts} at step {step}; stopped without updating the weights. "
            f"{kept} {self._advice(step, stats)}"
        )

    def _advice(self, step: int, stats: StepStats) -> str:
        s = self.s
        bad = _non_finite(s.model, s.optimizer)
        if bad:
            origin = (
                f"were loaded from {s.resumed_from}" if s.resumed_from is not None else "came from the initial weights"
            )
            return (
                f"The weights or optimizer state hold non-finite values ({', '.join(bad)}), which {origin}; "
                "resume from an earlier checkpoint (rename the later ones to damaged-ckpt-...)."
            )
        if s.model.bayesian and not math.isfinite(stats.kl):
            return (
                "The Bayesian head's KL is not finite (a posterior sigma of 0 or an extreme prior): check "
                "posterior_sigma_init and prior_sigma, or kl_beta."
            )
        if s.resumed_from is not None and step == s.start:
            return (
                f"This is the first step after resuming from {s.resumed_from.name}, whose checksums and values "
                "are sound: the run was already diverging there; resume from an earlier checkpoint."
            )
        return "Try a lower learning_rate, grad_clip, or dtype=float32."


def _non_finite(model: torch.nn.Module, optimizer: torch.optim.Optimizer, limit: int = 3) -> list[str]:
    """Names of up to ``limit`` parameters (or their optimizer state) holding NaN or inf."""
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    names = {id(p): n for n, p in model.named_parameters()}
    for p, st in optimizer.state.items():
        for key, v in st.items():
            if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all():
                bad.append(f"{key} of {names.get(id(p), '?')}")
    return bad[:limit]
