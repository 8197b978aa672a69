"""Crash-safe, checksummed checkpoints: safetensors weights, a weights_only state file, an atomic pointer.

A run folder holds ``ckpt-<step>/`` directories, each with ``model.safetensors`` (weights),
``state.pt`` (optimizer, step, config, data identity; plain tensors and Python values, read
with ``torch.load(weights_only=True)`` so a checkpoint can never execute code) and
``manifest.json`` (step, config, the validation cross-entropy at that step, and the size and
XXH3-128 digest of both files, taken once at write), plus a ``checkpoint.json`` pointer naming
the current one. A new checkpoint is written into a temporary folder, fsynced, renamed, and
only then does the pointer move (os.replace is atomic), so a crash or a full disk at any
moment leaves the previous checkpoint intact; a killed writer's temporary folder is removed
at the next start of training. The last ``keep`` checkpoints are kept, and the one with the
lowest validation cross-entropy ("best") besides.

Loading verifies the files against the manifest in full and falls back to the newest earlier
checkpoint that verifies, with a warning naming what was wrong.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from ..common.atomic import (
    TMP_SUFFIX,
    atomic_write,
    clean_temporaries,
    follow_umask,
    fsync_dir,
    reporting_write_failure,
)
from ..common.errors import GptvError, InputError
from ..common.runtime import resolve_device
from ..core.config import Config
from ..core.model import GPT
from .integrity import DEFAULT_ALGORITHM, check_files, describe_files

POINTER = "checkpoint.json"
MANIFEST = "manifest.json"
FILES = ("model.safetensors", "state.pt")
CKPT_RE = re.compile(r"^ckpt-(\d{8,})$")
DAMAGED_PREFIX = "damaged-"
TMP_PREFIX = ".ckpt-"


class CheckpointError(GptvError, RuntimeError):
    """A checkpoint is missing, damaged, or does not fit the model or data it is used with."""


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


_said: set[str] = set()


def warn(message: str) -> None:
    """Print ``warning: message`` to stderr, once per message per process."""
    if message not in _said:
        _said.add(message)
        print(f"warning: {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- writing


def save_checkpoint(
    run_dir: Path, model: torch.nn.Module, state: dict[str, Any], keep: int = 2, val_ce: float | None = None
) -> Path:
    """Write ckpt-<step>/ atomically with its manifest, move the pointer to it, then keep the last
    ``keep`` checkpoints and the best one (lowest ``val_ce``, the validation cross-entropy at its step).

    Any failure is one ``WriteError`` line saying what is free and that the previous checkpoint is intact.
    """
    run_dir = Path(run_dir)
    step = int(state["step"])
    name = f"ckpt-{step:08d}"
    intact = checkpoints_intact(run_dir)
    with reporting_write_failure(f"the checkpoint of step {step}", run_dir / name, intact):
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=run_dir, prefix=f".{name}.", suffix=TMP_SUFFIX))
        try:
            follow_umask(tmp, folder=True)
            _write_files(tmp, model, state, val_ce)
            _publish(run_dir, tmp, name, step)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    _rotate(run_dir, step, keep)
    return run_dir / name


def _write_files(folder: Path, model: torch.nn.Module, state: dict[str, Any], val_ce: float | None) -> None:
    save_model(_unwrap(model), str(folder / "model.safetensors"))
    torch.save(state, folder / "state.pt")
    for f in FILES:
        follow_umask(folder / f)
        with open(folder / f, "rb") as fh:
            os.fsync(fh.fileno())
    manifest = {
        "format": 1,
        "step": int(state["step"]),
        "val_ce": val_ce,
        "config": state.get("config"),
        "algorithm": DEFAULT_ALGORITHM,
        "files": describe_files(folder, FILES),
    }
    manifest["digest"] = _manifest_digest(manifest)
    with open(folder / MANIFEST, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(manifest, indent=1) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    fsync_dir(folder)


def _manifest_digest(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _publish(run_dir: Path, tmp: Path, name: str, step: int) -> None:
    final = run_dir / name
    replaced = _move_away(final) if final.exists() else None  # the same step again: an orphan past the pointer
    os.replace(tmp, final)
    fsync_dir(run_dir)
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)
    atomic_write(run_dir / POINTER, json.dumps({"dir": name, "step": step}) + "\n")


def _rotate(run_dir: Path, step: int, keep: int) -> None:
    """Delete checkpoints up to ``step`` beyond the last ``keep`` and the best (renamed away first, so a
    crash in the middle leaves a hidden temporary folder, never a half-deleted checkpoint)."""
    done = [(s, p) for s, p in checkpoints(run_dir) if s <= step]
    kept = {p for _, p in done[-max(1, keep) :]}
    best = best_checkpoint(run_dir)
    if best is not None:
        kept.add(best)
    for _, p in done:
        if p not in kept:
            shutil.rmtree(_move_away(p), ignore_errors=True)


def _move_away(folder: Path) -> Path:
    """Rename ``folder`` into a new hidden temporary folder beside it (one atomic rename); return that."""
    holder = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=TMP_SUFFIX))
    os.replace(folder, holder / folder.name)
    return holder


def checkpoints_intact(run_dir: Path) -> str:
    """What a failed write in ``run_dir`` leaves a reader: the current checkpoint, or that there is none."""
    prev = pointer_step(run_dir)
    return (
        f"the previous checkpoint (step {prev}) is intact" if prev is not None else "no checkpoint had been written yet"
    )


def clean_leftovers(run_dir: Path) -> list[str]:
    """Remove temporary folders and files a killed save left in ``run_dir`` (call while holding its run lock)."""
    return clean_temporaries(run_dir, TMP_PREFIX)


def set_aside(ckpt: Path) -> Path:
    """Rename a damaged checkpoint to ``damaged-ckpt-<step>`` so it is neither loaded nor rotated away."""
    target = ckpt.with_name(DAMAGED_PREFIX + ckpt.name)
    if target.exists():
        shutil.rmtree(target)
    os.replace(ckpt, target)
    return target


# ----------------------------------------------------------------------------- finding


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every ``ckpt-<step>`` folder, by step."""
    run_dir = Path(run_dir)
    found = (
        [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := CKPT_RE.match(p.name)) and p.is_dir()]
        if run_dir.is_dir()
        else []
    )
    return sorted(found)


def _read_pointer(run_dir: Path) -> tuple[str | None, str]:
    """(checkpoint folder name, problem); name is None when the pointer is missing or damaged."""
    pointer = run_dir / POINTER
    if not pointer.is_file():
        return None, f"{POINTER} is missing"
    try:
        info = json.loads(pointer.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return None, f"{pointer} is unreadable ({e})"
    name = info.get("dir") if isinstance(info, dict) else None
    if not isinstance(name, str) or not CKPT_RE.match(name):
        return None, f"{pointer} does not name a checkpoint folder (it holds {json.dumps(info)[:80]})"
    return name, ""


def pointer_step(run_dir: Path) -> int | None:
    """The step the pointer names, or None (no pointer or a damaged one); reads no checkpoint."""
    name, _ = _read_pointer(Path(run_dir))
    return _step_of(name) if name else None


def _step_of(name: str) -> int:
    """The step of a checkpoint folder name already checked against CKPT_RE."""
    m = CKPT_RE.match(name)
    assert m is not None, name
    return int(m.group(1))


def has_checkpoint(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run (a pointer or a checkpoint folder), intact or not."""
    return (Path(run_dir) / POINTER).exists() or bool(checkpoints(run_dir))


def read_manifest(ckpt: Path) -> dict[str, Any] | None:
    """The manifest of a checkpoint folder; None for checkpoints written before manifests existed."""
    path = Path(ckpt) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        ok = isinstance(manifest, dict) and manifest.get("digest") == _manifest_digest(manifest)
    except (OSError, ValueError):
        ok = False
    if not ok:
        raise CheckpointError(f"{MANIFEST} is damaged")
    return manifest


_verified: dict[tuple, list[str]] = {}


def verify_checkpoint(ckpt: Path, files: tuple[str, ...] = FILES) -> list[str]:
    """What is wrong with a checkpoint folder ([] when its files are complete and match their checksums).

    Full digests are computed once per process for unchanged files (size and modification time).
    """
    ckpt = Path(ckpt)
    missing = [f"incomplete: {f} is missing" for f in files if not (ckpt / f).is_file()]
    if missing:
        return missing
    key = (
        str(ckpt.resolve()),
        files,
        tuple(
            (f, (ckpt / f).stat().st_size, (ckpt / f).stat().st_mtime_ns)
            for f in (*files, MANIFEST)
            if (ckpt / f).exists()
        ),
    )
    if key not in _verified:
        try:
            manifest = read_manifest(ckpt)
        except CheckpointError as e:
            _verified[key] = [str(e)]
        else:
            if manifest is None:
                warn(f"{ckpt} has no checksums (saved by an older version); loading it unverified")
            _verified[key] = (
                [] if manifest is None else check_files(ckpt, manifest["files"], manifest["algorithm"], files)
            )
    return _verified[key]


def find_checkpoint(run_dir: Path) -> tuple[Path, list[tuple[Path, list[str]]]]:
    """(the newest checkpoint that verifies, [(newer damaged checkpoint, its problems)]).

    Candidates: the pointer's checkpoint, then earlier ones, newest first; every checkpoint
    folder, newest first, when the pointer itself is missing or damaged.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder {run_dir} does not exist")
    name, problem = _read_pointer(run_dir)
    found = checkpoints(run_dir)
    if name is None and not found:
        raise CheckpointError(f"{run_dir} holds no checkpoint ({problem}): was training started with --out {run_dir}?")
    if name is None:
        warn(f"{problem}; looking for the newest checkpoint folder in {run_dir} instead")
        order = [p for _, p in reversed(found)]
    else:
        top = _step_of(name)
        order = [run_dir / name] + [p for s, p in reversed(found) if s < top]
    skipped: list[tuple[Path, list[str]]] = []
    for ckpt in order:
        problems = verify_checkpoint(ckpt)
        if not problems:
            return ckpt, skipped
        skipped.append((ckpt, problems))
    raise CheckpointError(
        f"no usable checkpoint in {run_dir}: " + "; ".join(f"{c.name}: {', '.join(p)}" for c, p in skipped)
    )


def latest_checkpoint(run_dir: Path) -> Path:
    """The newest checkpoint of a run that verifies, warning about each newer one that does not."""
    ckpt, skipped = find_checkpoint(run_dir)
    for bad, problems in skipped:
        warn(f"checkpoint {bad} is unusable ({', '.join(problems)}); using {ckpt.name} instead")
    return ckpt


def best_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint with the lowest validation cross-entropy recorded in its manifest (None if none has one)."""
    scored = []
    for _, p in checkpoints(run_dir):
        try:
            val = (read_manifest(p) or {}).get("val_ce")
        except CheckpointError:
            continue
        if isinstance(val, (int, float)) and math.isfinite(val):
            scored.append((val, p))
    return min(scored)[1] if scored else None


# ----------------------------------------------------------------------------- reading


def _pickle_refusal(path: Path, text: str) -> str:
    """The refusal of a state file that holds more than tensors and plain values. It never relays
    torch's advice to load with ``weights_only=False`` (that would run the file's code): whatever
    torch's wording, only the line naming the refused object is kept."""
    lines = [x.strip() for x in text.splitlines() if x.strip() and "weights_only" not in x]
    named = [x for x in lines if re.search(r"unsupported|GLOBAL|WeightsUnpickler", x, re.IGNORECASE)]
    detail = named[0][:200] if named else "an object that is not a tensor or a plain value"
    return (
        f"cannot read {path}: it holds Python objects other than tensors and plain values ({detail}); "
        "gptvariants reads training states with torch.load(weights_only=True) and never runs code from "
        "a checkpoint, so this file, which gptvariants did not write, is refused"
    )


def load_state(ckpt: Path) -> dict[str, Any]:
    """The state dict of a checkpoint folder, loaded without unpickling arbitrary objects."""
    path = Path(ckpt) / "state.pt"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        text = str(e)
        if isinstance(e, pickle.UnpicklingError) or "weights_only" in text or "WeightsUnpickler" in text:
            raise CheckpointError(_pickle_refusal(path, text)) from None
        raise CheckpointError(f"cannot read {path}: {(text.splitlines() or [type(e).__name__])[0]}") from None
    if (
        not isinstance(state, dict)
        or not isinstance(state.get("step"), int)
        or not isinstance(state.get("config"), dict)
    ):
        raise CheckpointError(f"{path} is not a gptvariants training state (no step or config)")
    return state


def checkpoint_config(ckpt: Path) -> dict[str, Any]:
    """The run config saved with a checkpoint: from its manifest, or from state.pt for older checkpoints."""
    manifest = read_manifest(ckpt)
    if manifest is not None and isinstance(manifest.get("config"), dict):
        return manifest["config"]
    return load_state(ckpt)["config"]


def load_weights(ckpt: Path, model: torch.nn.Module) -> None:
    try:
        missing, unexpected = load_model(_unwrap(model), str(Path(ckpt) / "model.safetensors"), strict=False)
    except Exception as e:
        raise CheckpointError(f"cannot load weights from {ckpt}: {(str(e).splitlines() or [''])[0]}") from None
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {ckpt} does not fit this model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )


def check_compatible(state: dict[str, Any], config: dict[str, Any], data_meta: dict[str, Any] | None) -> None:
    """Refuse a checkpoint of another variant, model shape, vocabulary or tokenizer, naming the difference."""
    try:
        problems = _differences(state["config"], config)
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"the checkpoint's saved config is incomplete ({e!r} missing or malformed)") from None
    if data_meta is not None and isinstance(state.get("data"), dict):
        for key in ("tokenizer", "vocab_size", "hash"):
            if state["data"].get(key) != data_meta.get(key):
                problems.append(f"data {key} = {state['data'].get(key)!r} (this data: {data_meta.get(key)!r})")
    if problems:
        raise CheckpointError("checkpoint does not match this run: it was saved with " + "; ".join(problems))


def _differences(saved: dict[str, Any], config: dict[str, Any]) -> list[str]:
    problems = []
    if saved["objective"]["variant"] != config["objective"]["variant"]:
        problems.append(f"variant {saved['objective']['variant']!r} (asked: {config['objective']['variant']!r})")
    for key in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "bias", "tie_weights", "gelu"):
        if saved["model"][key] != config["model"][key]:
            problems.append(f"{key} = {saved['model'][key]} (asked: {config['model'][key]})")
    for key in ("head", "objective", "output_bias"):
        if saved["objective"][key] != config["objective"][key]:
            problems.append(f"{key} = {saved['objective'][key]} (asked: {config['objective'][key]})")
    return problems


def _best_or(latest: Path, run_dir: Path) -> Path:
    best = best_checkpoint(run_dir)
    if best is None:
        warn(f"no checkpoint of {run_dir} has a validation score; using the latest, {latest.name}")
        return latest
    problems = verify_checkpoint(best)
    if problems:
        warn(f"the best checkpoint {best} is unusable ({', '.join(problems)}); using the latest, {latest.name}")
        return latest
    return best


def load_run(run_dir: Path, device: str | torch.device = "cpu", which: str = "latest") -> tuple[GPT, Config]:
    """(model in eval mode, its Config) from a run folder's newest verified checkpoint, or ``which="best"``
    (lowest validation cross-entropy). A one-line DeviceError when ``device`` is not available."""

    dev = resolve_device(device)
    if which not in ("latest", "best"):
        raise InputError(f"which must be 'latest' or 'best', not {which!r}")
    ckpt = latest_checkpoint(Path(run_dir))
    if which == "best":
        ckpt = _best_or(ckpt, Path(run_dir))
    try:
        cfg = Config.from_dict(checkpoint_config(ckpt))
    except (ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f"the config saved in {ckpt} is unusable: {e}") from None
    model = GPT(cfg.model, cfg.objective)
    load_weights(ckpt, model)
    return model.to(dev).eval(), cfg
