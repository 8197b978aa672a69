"""Crash-safe checkpoints: safetensors weights, a weights_only state file, an atomic pointer.

A run folder holds ``ckpt-<step>/`` directories, each with ``model.safetensors`` (weights),
``state.pt`` (optimizer, step, config, data identity; plain tensors and Python values, read
with ``torch.load(weights_only=True)`` so a checkpoint can never execute code), and a
``checkpoint.json`` pointer naming the current one. A new checkpoint is written into a
temporary folder, fsynced, renamed, and only then does the pointer move (os.replace is
atomic), so a crash or a full disk at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from .atomic import atomic_write, fsync_dir

POINTER = "checkpoint.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, half-written, or does not fit the model or data it is used with."""


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def save_checkpoint(run_dir: Path, model: torch.nn.Module, state: dict[str, Any], keep: int = 1) -> Path:
    """Write ckpt-<step>/ atomically, move the pointer to it, and delete older checkpoints beyond ``keep``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    step = int(state["step"])
    name = f"ckpt-{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=run_dir, prefix=f".{name}."))
    try:
        save_model(_unwrap(model), str(tmp / "model.safetensors"))
        torch.save(state, tmp / "state.pt")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(tmp)
        final = run_dir / name
        if final.exists():  # re-saving the same step (after a resume): replace it out of the pointer's way
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(run_dir)
        atomic_write(run_dir / POINTER, json.dumps({"dir": name, "step": step}) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = sorted(p for p in run_dir.glob("ckpt-*") if p.is_dir() and p.name != name)
    for p in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path:
    """The folder the pointer names; a clear error when the run or its checkpoint is missing or broken."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder {run_dir} does not exist")
    pointer = run_dir / POINTER
    if not pointer.is_file():
        raise CheckpointError(f"{run_dir} holds no checkpoint ({POINTER} is missing): was training started with --out {run_dir}?")
    try:
        info = json.loads(pointer.read_text())
        ckpt = run_dir / info["dir"]
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{pointer} is unreadable: {e}") from None
    for f in ("model.safetensors", "state.pt"):
        if not (ckpt / f).is_file():
            raise CheckpointError(f"checkpoint {ckpt} is incomplete: {f} is missing")
    return ckpt


def load_state(ckpt: Path) -> dict[str, Any]:
    """The state dict of a checkpoint folder, loaded without unpickling arbitrary objects."""
    try:
        return torch.load(Path(ckpt) / "state.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise CheckpointError(f"cannot read {Path(ckpt) / 'state.pt'}: {e}") from None


def load_weights(ckpt: Path, model: torch.nn.Module) -> None:
    try:
        missing, unexpected = load_model(_unwrap(model), str(Path(ckpt) / "model.safetensors"), strict=False)
    except Exception as e:
        raise CheckpointError(f"cannot load weights from {ckpt}: {e}") from None
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {ckpt} does not fit this model: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")


def check_compatible(state: dict[str, Any], config: dict[str, Any], data_meta: dict[str, Any] | None) -> None:
    """Refuse a checkpoint of another variant, model shape, vocabulary or tokenizer, naming the difference."""
    saved = state["config"]
    problems = []
    if saved["objective"]["variant"] != config["objective"]["variant"]:
        problems.append(f"variant {saved['objective']['variant']!r} (asked: {config['objective']['variant']!r})")
    for key in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "bias", "tie_weights", "gelu"):
        if saved["model"][key] != config["model"][key]:
            problems.append(f"{key} = {saved['model'][key]} (asked: {config['model'][key]})")
    for key in ("head", "objective", "output_bias"):
        if saved["objective"][key] != config["objective"][key]:
            problems.append(f"{key} = {saved['objective'][key]} (asked: {config['objective'][key]})")
    if data_meta is not None and "data" in state:
        for key in ("tokenizer", "vocab_size", "hash"):
            if state["data"].get(key) != data_meta.get(key):
                problems.append(f"data {key} = {state['data'].get(key)!r} (this data: {data_meta.get(key)!r})")
    if problems:
        raise CheckpointError("checkpoint does not match this run: it was saved with " + "; ".join(problems))


def load_run(run_dir: Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Any]:
    """(model in eval mode, its Config) from a run folder's current checkpoint."""
    from .config import Config
    from .model import GPT

    ckpt = latest_checkpoint(Path(run_dir))
    state = load_state(ckpt)
    cfg = Config.from_dict(state["config"])
    model = GPT(cfg.model, cfg.objective)
    load_weights(ckpt, model)
    return model.to(device).eval(), cfg
