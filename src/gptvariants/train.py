"""The training loop shared by every variant: single process, or DDP under torchrun.

Determinism: every optimizer step s draws its global batch from a generator seeded by
(seed, s) and reseeds the global RNG from (seed, s, rank) before the forward pass (dropout,
Bayesian weight draws). A run therefore resumes exactly from any checkpoint without
carrying RNG state, and a DDP run over W ranks with G accumulation steps sees the same
global batch as one process with G steps: rank r takes micro-batches r*G/W .. (r+1)*G/W - 1.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from .allocator import keep_freed_memory
from .atomic import atomic_write
from .checkpoint import CheckpointError, check_compatible, latest_checkpoint, load_state, load_weights, save_checkpoint
from .config import Config
from .data import TokenDataset
from .model import GPT
from .predictive import Predictor


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# ----------------------------------------------------------------------------- environment


@dataclass
class Runtime:
    device: torch.device
    dtype: torch.dtype
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def autocast(self):
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)


def setup_runtime(cfg: Config) -> Runtime:
    """Pick device and dtype; join the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    name = cfg.train.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    if name == "cuda" and world > 1:
        name = f"cuda:{local_rank}"
    device = torch.device(name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        backend = cfg.train.backend if cfg.train.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
        dist.init_process_group(backend=backend)
    dtype_name = cfg.train.dtype
    if dtype_name == "auto":
        if device.type == "cuda":
            dtype_name = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        else:
            dtype_name = "float32"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Runtime(device, getattr(torch, dtype_name), rank, world, local_rank)


def step_seed(seed: int, step: int, rank: int = 0, stream: int = 0) -> int:
    """A 63-bit seed for (run seed, step, rank, stream) that is stable across processes."""
    return int(np.random.SeedSequence([seed, step, rank, stream]).generate_state(2, np.uint32).view(np.uint64)[0] >> 1)


# ----------------------------------------------------------------------------- data


class Batches:
    """Global batches of (x, y, sets) windows, reproducible from (seed, step)."""

    def __init__(self, data: TokenDataset, cfg: Config, rt: Runtime, sets_dir: Path | None) -> None:
        self.data, self.rt = data, rt
        self.B, self.T = cfg.train.batch_size, cfg.model.block_size
        self.G = cfg.train.gradient_accumulation_steps
        if self.G % rt.world:
            raise ValueError(f"gradient_accumulation_steps ({self.G}) must be a multiple of the number of processes ({rt.world})")
        self.seed = cfg.train.seed
        self.sets = {s: data.open_sets(sets_dir, s) for s in ("train", "val")} if sets_dir else {}
        self.set_draws = 1  # how the sets were drawn: m of the sigmoid readout (objectives.SigmoidBCE)
        if sets_dir:
            from .targets import readout_draws

            meta = json.loads((sets_dir / "meta.json").read_text(encoding="utf-8"))
            self.set_draws = readout_draws(meta["rules"].get("select", "top"), int(meta["k"]))
        self.teacher = None
        if cfg.objective.teacher:
            if sets_dir:
                raise ValueError("give either targets (cached sets) or teacher (online sets), not both")
            from .targets import build_online_teacher

            self.teacher = build_online_teacher(cfg.objective.teacher, data, rt.device)
            self.set_draws = self.teacher.set_draws
        self.n = {split: len(data.split(split)) for split in ("train", "val")}
        for split, n in self.n.items():
            if self.T >= n:
                raise ValueError(f"block_size {self.T} is larger than the {split} split ({n} tokens); use a smaller block_size or more data")

    def _offsets(self, split: str, count: int, step: int, stream: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(step_seed(self.seed, step, 0, stream))
        return torch.randint(self.n[split] - self.T, (count,), generator=g)

    def micro_batches(self, step: int):
        """This rank's micro-batches of global training batch ``step``: a list of (x, y, sets) on the device."""
        offsets = self._offsets("train", self.G * self.B, step, 0).view(self.G, self.B)
        per_rank = self.G // self.rt.world
        return [self._load("train", o) for o in offsets[self.rt.rank * per_rank : (self.rt.rank + 1) * per_rank]]

    def eval_batch(self, split: str, i: int):
        """Evaluation batch ``i`` of a split: the same windows at every evaluation and for every variant."""
        return self._load(split, self._offsets(split, self.B, 0, 1000 + i))

    def _load(self, split: str, offsets: torch.Tensor):
        x, y, s = self.data.windows(split, offsets.numpy(), self.T, self.sets.get(split))
        dev = self.rt.device
        nb = dev.type == "cuda"
        x, y = x.to(dev, non_blocking=nb), y.to(dev, non_blocking=nb)
        if self.teacher is not None:
            return x, y, self.teacher(x)
        return x, y, (s.to(dev, non_blocking=nb) if s is not None else None)


# ----------------------------------------------------------------------------- schedule and evaluation


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


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of known GPUs, for MFU; None where unknown (CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L4", 121e12), ("A10", 125e12), ("V100", 125e12), ("4090", 165e12)):
        if key in name:
            return flops
    return None


# ----------------------------------------------------------------------------- logging


class Logger:
    """metrics.jsonl always; a progress bar in a terminal, plain lines otherwise; TensorBoard and W&B when asked."""

    def __init__(self, run_dir: Path, cfg: Config, rt: Runtime, start_step: int) -> None:
        self.enabled = rt.main
        self.path = run_dir / "metrics.jsonl"
        self.bar = None
        self.tb = None
        self.wandb = None
        if not self.enabled:
            return
        if start_step > 0 and self.path.exists():  # drop records past the checkpoint: the resumed run rewrites them
            kept = [l for l in self.path.read_text().splitlines() if l and json.loads(l)["step"] <= start_step]
            atomic_write(self.path, "".join(l + "\n" for l in kept))
        elif start_step == 0:
            self.path.unlink(missing_ok=True)
        mode = cfg.train.progress
        if mode == "bar" or (mode == "auto" and sys.stderr.isatty()):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=cfg.train.max_iters, initial=start_step, unit="step", dynamic_ncols=True)
        if cfg.train.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"))
            except ImportError:
                pass
        if cfg.train.wandb_log:
            import wandb  # reads WANDB_API_KEY from the environment; never from a file

            self.wandb = wandb.init(project=cfg.train.wandb_project, name=cfg.train.wandb_run_name or None, config=cfg.to_dict())

    def log(self, record: dict[str, Any], message: str | None = None) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        step = record["step"]
        for k, v in record.items():
            if isinstance(v, (int, float)) and k != "step":
                if self.tb is not None:
                    self.tb.add_scalar(f"{record['kind']}/{k}", v, step)
        if self.wandb is not None:
            self.wandb.log({f"{record['kind']}/{k}": v for k, v in record.items() if k != "kind"}, step=step)
        if message:
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


# ----------------------------------------------------------------------------- the loop


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    last_eval: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False
    model: GPT | None = None  # the trained model (unwrapped from DDP)


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
        print("\ninterrupt received: finishing this step, saving a checkpoint, then stopping (Ctrl-C again to abort)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def build_model(cfg: Config, rt: Runtime) -> GPT:
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank and on resume
    model = GPT(cfg.model, cfg.objective)
    init = cfg.train.init_from
    if init not in ("scratch", "resume"):
        from .pretrained import load_gpt2_weights

        load_gpt2_weights(model, init)
    return model.to(rt.device)


def train(cfg: Config, resume: bool = False) -> TrainResult:
    """Train ``cfg`` into ``cfg.train.out_dir``; with ``resume`` continue from its checkpoint exactly."""
    keep_freed_memory()
    rt = setup_runtime(cfg)
    try:
        return _train(cfg, rt, resume)
    finally:
        if rt.distributed and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: Config, rt: Runtime, resume: bool) -> TrainResult:
    if not cfg.train.data:
        raise ValueError("no data folder given: pass --data DIR (made by `gptv prepare`)")
    if not cfg.train.out_dir:
        raise ValueError("no run folder given: pass --out RUN")
    data = TokenDataset(Path(cfg.train.data))
    if cfg.model.vocab_size == 0:
        cfg.model.vocab_size = data.vocab_size
    elif cfg.model.vocab_size < data.vocab_size:
        raise ValueError(f"vocab_size {cfg.model.vocab_size} is smaller than the data's ({data.vocab_size})")
    run_dir = Path(cfg.train.out_dir)
    sets_dir = Path(cfg.train.data) / "targets" / cfg.objective.targets if cfg.objective.targets else None
    if (cfg.objective.targets or cfg.objective.teacher) and cfg.objective.objective != "bce":
        raise ValueError(f"targets and teacher are only used by sigmoid variants, not {cfg.objective.variant!r}")
    if sets_dir is not None and not (sets_dir / "meta.json").is_file():
        raise FileNotFoundError(f"no teacher sets in {sets_dir}; build them with `gptv targets --data {cfg.train.data} --teacher SPEC --out {sets_dir}`")
    batches = Batches(data, cfg, rt, sets_dir)
    n_train_tokens = batches.n["train"]
    if cfg.objective.objective == "bce":
        if cfg.objective.set_draws == 0:
            cfg.objective.set_draws = batches.set_draws
        elif cfg.objective.set_draws != batches.set_draws:
            raise ValueError(f"set_draws={cfg.objective.set_draws} does not match the sets, which imply {batches.set_draws} "
                             "(sampled sets: their k; top-k sets or the true token alone: 1); leave set_draws unset")

    model = build_model(cfg, rt)
    optimizer = model.configure_optimizer(cfg.train.weight_decay, cfg.train.learning_rate, (cfg.train.beta1, cfg.train.beta2), rt.device.type)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.dtype == torch.float16)
    data_info = {"tokenizer": data.meta["tokenizer"], "vocab_size": data.vocab_size, "hash": data.meta["hash"]}

    start = 0
    best_val = float("inf")
    if resume:
        ckpt = latest_checkpoint(run_dir)
        state = load_state(ckpt)
        check_compatible(state, cfg.to_dict(), data_info)
        load_weights(ckpt, model)
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start, best_val = int(state["step"]), float(state["best_val"])
        if rt.main:
            print(f"resuming {run_dir} from step {start}", flush=True)
    elif rt.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if (run_dir / "checkpoint.json").exists() and cfg.train.max_iters > 0:
            raise CheckpointError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    if rt.main:
        cfg.save(run_dir / "config.json")
        data.tokenizer.save(run_dir)  # sampling needs only the run folder
        atomic_write(run_dir / "data.json", json.dumps({**data.meta, "path": str(Path(cfg.train.data).resolve())}, indent=2) + "\n")

    raw = model
    if cfg.train.compile:
        raw.transformer.compile()
    if rt.distributed:
        model = DDP(model, device_ids=[rt.local_rank] if rt.device.type == "cuda" else None)

    def state_dict(step: int) -> dict[str, Any]:
        return {
            "step": step,
            "best_val": best_val,
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "config": cfg.to_dict(),
            "data": data_info,
        }

    def checkpoint(step: int) -> None:
        if not rt.main:
            return
        try:
            save_checkpoint(run_dir, raw, state_dict(step))
        except OSError as e:
            prev = _previous_step(run_dir)
            raise OSError(e.errno, f"could not save the checkpoint of step {step} ({e.strerror}); the previous checkpoint{'' if prev is None else f' (step {prev})'} is intact") from e

    logger = Logger(run_dir, cfg, rt, start)
    tokens_per_step = cfg.train.batch_size * cfg.model.block_size * cfg.train.gradient_accumulation_steps
    flops = peak_flops(rt.device)
    ckpt_interval = cfg.train.ckpt_interval or cfg.train.eval_interval
    G_local = cfg.train.gradient_accumulation_steps // rt.world
    result = TrainResult(run_dir, start, model=raw)
    step = start
    t_last = time.perf_counter()
    steps_since = 0

    def evaluate(step: int) -> dict[str, float]:
        nonlocal best_val
        ev = estimate_losses(raw, batches, rt, cfg.train.eval_iters)
        best_val = min(best_val, ev["val_ce"])
        own = "" if cfg.objective.objective == "ce" else f", val {cfg.objective.objective} {ev['val_objective']:.4f}"
        logger.log({"kind": "eval", "step": step, **ev}, f"step {step}: val ce {ev['val_ce']:.4f}, train ce {ev['train_ce']:.4f}{own}")
        result.last_eval = ev
        return ev

    with _StopFlag() as stop:
        try:
            if start == 0 or cfg.train.eval_only:  # a resumed run already logged the evaluation at its checkpoint
                evaluate(step)
            if cfg.train.eval_only:
                return result
            t_last = time.perf_counter()
            while step < cfg.train.max_iters:
                lr = lr_at(step, cfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_mult", 1.0)
                torch.manual_seed(step_seed(cfg.train.seed, step, rt.rank, 1))
                micro = batches.micro_batches(step)
                obj_sum = kl_val = 0.0
                for i, (x, y, s) in enumerate(micro):
                    sync = nullcontext() if (not rt.distributed or i == G_local - 1) else model.no_sync()
                    with sync:
                        with rt.autocast():
                            out = model(x, y, s, n_train_tokens, raw.kl_weight(step))
                        scaler.scale(out.loss / G_local).backward()
                    obj_sum += out.objective.item()
                    kl_val = out.kl.item()
                loss_val = obj_sum / G_local
                if not math.isfinite(loss_val):
                    prev = _previous_step(run_dir)
                    raise TrainingDiverged(
                        f"loss became {loss_val} at step {step}; stopped without updating the weights. "
                        + (f"The last good checkpoint (step {prev}) in {run_dir} is kept." if prev is not None else "No checkpoint was written yet.")
                        + " Try a lower learning_rate, grad_clip, or dtype=float32."
                    )
                if cfg.train.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    gnorm = torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.train.grad_clip).item()
                else:
                    gnorm = float("nan")
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                steps_since += 1
                result.step = step

                if step % cfg.train.log_interval == 0 or step == cfg.train.max_iters:
                    if rt.device.type == "cuda":
                        torch.cuda.synchronize()
                    now = time.perf_counter()
                    dt = (now - t_last) / steps_since
                    t_last, steps_since = now, 0
                    tps = tokens_per_step / dt
                    rec = {"kind": "train", "step": step, "loss": loss_val, "lr": lr, "grad_norm": gnorm,
                           "ms_per_step": dt * 1000, "tokens_per_s": tps,
                           "tflops": raw.estimate_mfu(tps, 1e12)}
                    if flops:
                        rec["mfu"] = raw.estimate_mfu(tps, flops)
                    if raw.bayesian:
                        rec.update(kl=kl_val, kl_weight=raw.kl_weight(step - 1), **raw.head.stats())
                    msg = f"step {step}: loss {loss_val:.4f}, {dt * 1000:.1f} ms/step, {tps:,.0f} tok/s" + (f", mfu {rec['mfu'] * 100:.1f}%" if flops else "")
                    if raw.bayesian:
                        msg += f", kl {kl_val:.4g}, sigma mean {rec['sigma_mean']:.2e} [{rec['sigma_min']:.1e}, {rec['sigma_max']:.1e}]"
                    logger.log(rec, None if logger.bar is not None else msg)
                logger.advance(1, f"loss {loss_val:.4f}")
                evaluated = step % cfg.train.eval_interval == 0 or step == cfg.train.max_iters
                if evaluated:
                    evaluate(step)
                if step % ckpt_interval == 0 or step == cfg.train.max_iters:
                    checkpoint(step)
                    evaluated = True
                if evaluated:  # keep evaluation and checkpoint time out of ms/step
                    t_last, steps_since = time.perf_counter(), 0
                if rt.distributed:
                    # all ranks must agree to stop (a signal may reach only some of them)
                    flag = torch.tensor([float(stop.requested)], device=rt.device)
                    dist.all_reduce(flag)
                    stop.requested = flag.item() > 0
                if stop.requested:
                    if step % ckpt_interval and step != cfg.train.max_iters:
                        checkpoint(step)
                    result.interrupted = True
                    logger.log({"kind": "interrupt", "step": step}, f"stopped at step {step}; resume with --resume")
                    break
            if cfg.train.max_iters == 0 and rt.main:
                checkpoint(0)
        finally:
            logger.close()
    return result


def _previous_step(run_dir: Path) -> int | None:
    try:
        return int(load_state(latest_checkpoint(run_dir))["step"])
    except CheckpointError:
        return None
