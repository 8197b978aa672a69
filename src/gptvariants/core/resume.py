"""Resuming a run with changed settings, and fitting the accumulation to the processes torchrun started.

A resumed run keeps what its checkpoint fixes (shape, objective, data, seed) and may change its
schedule, cadence, devices and logging (``RESUME_SAFE``); anything else is refused with the reason.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..common.inputs import InputError, read_json
from .config import KEYS, PER_INVOCATION, Config, ConfigError, read_config_file, set_key

# keys a resumed run may change: schedule, cadence, devices, logging (the rest fix what the checkpoint is)
RESUME_SAFE = frozenset(
    {
        "max_iters",
        "eval_interval",
        "eval_iters",
        "log_interval",
        "ckpt_interval",
        "keep_checkpoints",
        "eval_only",
        "progress",
        "device",
        "dtype",
        "compile",
        "backend",
        "tensorboard",
        "wandb_log",
        "wandb_project",
        "wandb_run_name",
        "learning_rate",
        "min_lr",
        "warmup_iters",
        "lr_decay_iters",
        "decay_lr",
        "weight_decay",
        "beta1",
        "beta2",
        "grad_clip",
        "batch_size",
        "gradient_accumulation_steps",
        "dropout",
        "mc_samples",
        "loss_chunk_size",
        "data",
        "out_dir",
    }
)
_SHAPE = {"size", "n_layer", "n_head", "n_embd", "block_size", "bias", "tie_weights", "gelu", "output_bias"}


def _resume_refusal(key: str) -> str:
    if key in _SHAPE:
        return "it changes the model's shape or function, which the checkpoint fixes"
    if key == "vocab_size":
        return "the vocabulary is fixed by the checkpoint and its data"
    if key in ("variant", "head", "objective"):
        return "a checkpoint continues with its own variant; start a new run (--init_from) for another"
    if key in ("targets", "teacher", "set_draws"):
        return "the run's target sets define its objective"
    if key == "seed":
        return "the run's batches and random draws derive from its seed"
    if key == "init_from":
        return "it applies to a new run only"
    return "it defines the run's objective"


def resume_config(
    run_dir: Path, variant: str | None = None, file: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> Config:
    """The saved config of ``run_dir`` (its config.json) with the explicitly asked values applied.

    A value equal to the saved one is always accepted; a different one only for the keys in
    ``RESUME_SAFE``; any other change is refused with the reason. The data folder defaults to
    the one the run recorded in data.json.
    """

    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    try:
        saved = read_json(path)
        data_info = read_json(run_dir / "data.json") if (run_dir / "data.json").is_file() else {}
    except InputError as e:
        raise ConfigError(str(e)) from None
    cfg = Config.from_dict(saved, source=str(path))
    for k in PER_INVOCATION:  # runs saved before these keys were left out of config.json
        setattr(getattr(cfg, KEYS[k]), k, getattr(getattr(Config(), KEYS[k]), k))
    asked = {**(read_config_file(file) if file is not None else {}), **(overrides or {})}
    if variant is not None:
        asked["variant"] = variant
    asked = {k.replace("-", "_"): v for k, v in asked.items()}
    asked.setdefault("data", data_info.get("path") if isinstance(data_info.get("path"), str) else None)
    if asked["data"] is None:
        del asked["data"]
    asked["out_dir"] = str(run_dir)
    refused = []
    for k, v in asked.items():
        probe = Config()
        set_key(probe, k, v, source="command line")
        value = getattr(getattr(probe, KEYS[k]), k)
        if value == getattr(getattr(cfg, KEYS[k]), k):
            continue
        if k not in RESUME_SAFE:
            refused.append(f"{k} (saved {getattr(getattr(cfg, KEYS[k]), k)!r}, asked {value!r}): {_resume_refusal(k)}")
            continue
        setattr(getattr(cfg, KEYS[k]), k, value)
    if refused:
        raise ConfigError(f"cannot resume {run_dir} with " + "; ".join(refused))
    cfg.validate()
    return cfg


def fit_world_size(cfg: Config, world: int) -> str | None:
    """Round gradient_accumulation_steps (the global count of micro-batches) up to a multiple of
    the number of processes, so that each one takes an equal share; a note when it changed."""
    g = cfg.train.gradient_accumulation_steps
    if world <= 1 or g % world == 0:
        return None
    cfg.train.gradient_accumulation_steps = math.ceil(g / world) * world
    g_new = cfg.train.gradient_accumulation_steps
    return (
        f"gradient_accumulation_steps {g} rounded up to {g_new}, a multiple of the {world} processes "
        f"(global batch {g_new * cfg.train.batch_size} sequences)"
    )
