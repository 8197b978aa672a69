"""Set-up and resume of a training run: data, model, optimizer, the run lock and the checkpoint to continue from.

Order matters for losing nothing: everything that only reads (config, data, devices, W&B)
is checked before the run folder is created; the folder is then locked, and only the lock
holder decides whether the folder already holds a run, cleans a killed writer's leftovers
and writes. On resume the checkpoint's checksums are verified in a background thread while
the model is built (hashing releases the GIL), so verification adds little to start-up.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..common.atomic import atomic_write
from ..common.errors import InputError
from ..common.runtime import Runtime, all_ranks_any
from ..core.config import Config
from ..core.model import GPT
from ..core.pretrained import load_gpt2_weights
from ..data.dataset import SPLITS, TokenDataset
from ..store.checkpoint import (
    CheckpointError,
    check_compatible,
    clean_leftovers,
    find_checkpoint,
    has_checkpoint,
    load_state,
    load_weights,
    set_aside,
    warn,
)
from ..store.integrity import check_data, data_fingerprint
from ..store.runlock import RunLock, RunLocked
from .batches import Batches


@dataclass
class Session:
    """Everything the loop needs, set up and (on resume) restored."""

    cfg: Config
    rt: Runtime
    run_dir: Path
    data: TokenDataset
    batches: Batches
    model: GPT
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    data_info: dict[str, Any]
    start: int = 0
    best_val: float = float("inf")
    resumed_from: Path | None = None

    def state_dict(self, step: int) -> dict[str, Any]:
        """What state.pt holds besides the weights."""
        return {
            "step": step,
            "best_val": self.best_val,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "config": self.cfg.to_dict(),
            "data": self.data_info,
        }


def open_data(cfg: Config, rt: Runtime) -> tuple[TokenDataset, Batches]:
    """The dataset and its batches, with every check that only reads (nothing is written)."""
    if not cfg.train.data:
        raise InputError("no data folder given: pass --data DIR (made by `gptv prepare`)")
    if not cfg.train.out_dir:
        raise InputError("no run folder given: pass --out RUN")
    data = TokenDataset(Path(cfg.train.data))
    if cfg.model.vocab_size == 0:
        cfg.model.vocab_size = data.vocab_size
    elif cfg.model.vocab_size < data.vocab_size:
        raise InputError(f"vocab_size {cfg.model.vocab_size} is smaller than the data's ({data.vocab_size})")
    sets_dir = Path(cfg.train.data) / "targets" / cfg.objective.targets if cfg.objective.targets else None
    if (cfg.objective.targets or cfg.objective.teacher) and cfg.objective.objective != "bce":
        raise InputError(f"targets and teacher are only used by sigmoid variants, not {cfg.objective.variant!r}")
    if sets_dir is not None and not (sets_dir / "meta.json").is_file():
        raise FileNotFoundError(
            f"no teacher sets in {sets_dir}; build them with "
            f"`gptv targets --data {cfg.train.data} --teacher SPEC --out {sets_dir}`"
        )
    batches = Batches(data, cfg, rt, sets_dir)
    if cfg.objective.objective == "bce":
        if cfg.objective.set_draws == 0:
            cfg.objective.set_draws = batches.set_draws
        elif cfg.objective.set_draws != batches.set_draws:
            raise InputError(
                f"set_draws={cfg.objective.set_draws} does not match the sets, which imply {batches.set_draws} "
                "(sampled sets: their k; top-k sets or the true token alone: 1); leave set_draws unset"
            )
    return data, batches


@contextmanager
def run_lock(run_dir: Path, rt: Runtime) -> Iterator[None]:
    """Hold ``run_dir``'s lock (rank 0) for the block; every rank stops with RunLocked if it is taken."""
    created = not run_dir.exists()
    lock, error = RunLock(run_dir), None
    if rt.main:
        try:
            lock.acquire()
        except RunLocked as e:
            error = e
    if all_ranks_any(rt, error is not None)[0]:
        if created:
            _remove_if_empty(run_dir)
        raise error or RunLocked(f"rank 0 could not lock {run_dir}")
    if lock.took_over is not None:
        print(
            f"took over the stale lock of {run_dir} (pid {lock.took_over.get('pid', '?')} is no longer running)",
            flush=True,
        )
    try:
        yield
    except BaseException:
        lock.release()
        if created:
            _remove_if_empty(run_dir)
        raise
    lock.release()


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def build_model(cfg: Config, rt: Runtime) -> GPT:
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank and on resume
    model = GPT(cfg.model, cfg.objective)
    init = cfg.train.init_from
    if init not in ("scratch", "resume"):
        load_gpt2_weights(model, init)
    return model.to(rt.device)


def start_session(cfg: Config, rt: Runtime, data: TokenDataset, batches: Batches, resume: bool) -> Session:
    """Build model and optimizer; restore them from the newest verified checkpoint when ``resume``.

    A fresh run into a folder that already holds one is refused (whatever max_iters is).
    Call while holding the run lock.
    """
    run_dir = Path(cfg.train.out_dir)
    if rt.main:
        removed = clean_leftovers(run_dir)
        if removed:
            print(f"removed {len(removed)} temporary file(s) left by an interrupted save in {run_dir}", flush=True)
    if not resume and all_ranks_any(rt, rt.main and has_checkpoint(run_dir))[0]:
        raise CheckpointError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    pool = ThreadPoolExecutor(max_workers=1) if resume else None
    pending = pool.submit(_choose_checkpoint, run_dir, rt) if pool else None
    try:
        model = build_model(cfg, rt)
        optimizer = model.configure_optimizer(
            cfg.train.weight_decay, cfg.train.learning_rate, (cfg.train.beta1, cfg.train.beta2), rt.device.type
        )
        info = {
            "tokenizer": data.meta["tokenizer"],
            "vocab_size": data.vocab_size,
            "hash": data.meta["hash"],
            "files": data_fingerprint(data.dir, SPLITS),
        }
        s = Session(
            cfg,
            rt,
            run_dir,
            data,
            batches,
            model,
            optimizer,
            torch.amp.GradScaler(rt.device.type, enabled=rt.dtype == torch.float16),
            info,
        )
        if pending is not None:
            restore(s, _agree(rt, pending))
    finally:
        if pool:
            pool.shutdown(wait=True)
    return s


def _choose_checkpoint(run_dir: Path, rt: Runtime) -> tuple[Path, list[tuple[Path, list[str]]]] | None:
    """Rank 0: the newest verified checkpoint and the damaged newer ones; other ranks wait for its choice."""
    return find_checkpoint(run_dir) if rt.main else None


def _agree(rt: Runtime, pending: Future) -> Path:
    """The checkpoint rank 0 chose, on every rank; damaged newer ones are set aside with a warning."""
    name: str | None = None
    error: str | None = None
    if rt.main:
        try:
            ckpt, damaged = pending.result()
        except CheckpointError as e:
            error = str(e)
        else:
            name = str(ckpt)
            for bad, problems in damaged:
                kept = set_aside(bad)
                warn(
                    f"checkpoint {bad} is damaged ({', '.join(problems)}); resuming from {ckpt.name} instead. "
                    f"The damaged one was moved to {kept.name}: delete it once you have looked"
                )
    if rt.distributed:
        box = [name, error]
        dist.broadcast_object_list(box, src=0)
        name, error = box
    if error is not None:
        raise CheckpointError(error)
    assert name is not None  # rank 0 names a checkpoint whenever it reports no error
    return Path(name)


def restore(s: Session, ckpt: Path) -> None:
    """Load weights, optimizer and scaler state from ``ckpt`` after checking config and data still fit."""
    state = load_state(ckpt)
    check_compatible(state, s.cfg.to_dict(), s.data_info)
    saved_files = (state.get("data") or {}).get("files")
    if isinstance(saved_files, dict):
        changed = check_data(s.data.dir, saved_files, s.data.meta["hash"], SPLITS)
        if changed:
            raise InputError(
                f"the data in {s.data.dir} changed since {ckpt.name} was saved ({'; '.join(changed)}); "
                "a resumed run must see the tokens it was trained on: restore the data, or start a new run"
            )
    load_weights(ckpt, s.model)
    try:
        s.optimizer.load_state_dict(state["optimizer"])
        s.scaler.load_state_dict(state["scaler"])
        s.best_val = float(state.get("best_val", float("inf")))
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{ckpt / 'state.pt'} does not fit this run's optimizer: {e!r}") from None
    s.start, s.resumed_from = int(state["step"]), ckpt
    if s.rt.main:
        print(f"resuming {s.run_dir} from step {s.start} ({ckpt.name})", flush=True)


def write_run_files(s: Session) -> None:
    """config.json, the tokenizer (sampling needs only the run folder) and data.json; rank 0 only."""
    if not s.rt.main:
        return
    s.cfg.save(s.run_dir / "config.json")
    s.data.tokenizer.save(s.run_dir)
    atomic_write(
        s.run_dir / "data.json",
        json.dumps({**s.data.meta, "path": str(Path(s.cfg.train.data).resolve())}, indent=2) + "\n",
    )
