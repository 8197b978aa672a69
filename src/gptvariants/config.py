"""Typed run configuration: dataclasses, a TOML file, and ``--key=value`` overrides.

Resolution order (later wins): dataclass defaults < the variant's defaults < the TOML file
< command-line overrides. Keys are flat and unique across sections and follow nanoGPT's
names where one exists (``max_iters``, ``n_layer``, ``learning_rate`` ...), so a TOML file
may be written flat or with ``[model]``, ``[objective]`` and ``[train]`` tables.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


# name -> (n_layer, n_head, n_embd); the GPT-2 family plus shapes that train on a laptop CPU.
MODEL_SIZES: dict[str, tuple[int, int, int]] = {
    "gpt2": (12, 12, 768),
    "gpt2-medium": (24, 16, 1024),
    "gpt2-large": (36, 20, 1280),
    "gpt2-xl": (48, 25, 1600),
    "nano": (2, 2, 64),
    "cpu": (4, 4, 128),  # nanoGPT's CPU recipe
    "mini": (6, 6, 384),  # nanoGPT's shakespeare_char GPU recipe
}


@dataclass
class ModelConfig:
    """The GPT backbone. ``vocab_size`` is taken from the data when left at 0."""

    size: str = ""  # a MODEL_SIZES name; sets n_layer/n_head/n_embd unless those are given
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64
    vocab_size: int = 0
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm layers (GPT-2: True)
    gelu: str = "tanh"  # 'tanh' approximation (GPT-2, needed to match its weights) | 'exact' erf (nanoGPT; ~10% faster steps on CPU)
    tie_weights: bool = True  # token embedding shares the output (mean) weight

    def validate(self) -> None:
        _check(self.n_layer > 0 and self.n_head > 0 and self.n_embd > 0, "n_layer, n_head and n_embd must be positive")
        _check(self.n_embd % self.n_head == 0, f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        _check(self.block_size > 0, "block_size must be positive")
        _check(0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)")
        _check(self.gelu in ("tanh", "exact"), f"gelu must be 'tanh' or 'exact', not {self.gelu!r}")


@dataclass
class ObjectiveConfig:
    """Head and objective hyper-parameters; a variant fills in its own defaults."""

    variant: str = "baseline"
    head: str = ""  # 'linear' | 'bayesian' (from the variant)
    objective: str = ""  # 'ce' | 'smooth' | 'bce' (from the variant)
    label_smoothing: float = 0.1  # eps: 1-eps on the true token, eps/(V-1) elsewhere
    pos_weight: float = 1.0  # BCE positive-class weight w
    sum_penalty: float = 0.0  # lambda in lambda * (sum_v sigmoid(z_v) - 1)^2
    output_bias: bool = False  # a bias in the output layer (sigmoid heads start it at -log V)
    prior_mu: float = 0.0  # Bayesian head prior N(prior_mu, prior_sigma^2)
    prior_sigma: float = 0.02
    posterior_sigma_init: float = 1e-3
    kl_beta: float = 1.0  # loss = objective + kl_beta * KL / N_train_tokens
    mc_samples: int = 8  # Monte-Carlo draws for Bayesian prediction
    targets: str = ""  # cached teacher sets under DATA/targets/<name>; '' = the true token only
    set_draws: int = 0  # m of the sigmoid readout (objectives.SigmoidBCE); 0 = from the sets, set by training
    teacher: str = ""  # online teacher spec (built in the training loop)
    loss_chunk_size: int = 0  # rows of (N, V) logits per chunk; 0 = about 32 MiB of fp32

    def validate(self) -> None:
        _check(0.0 <= self.label_smoothing < 1.0, "label_smoothing must be in [0, 1)")
        _check(self.pos_weight > 0, "pos_weight must be positive")
        _check(self.sum_penalty >= 0, "sum_penalty must be >= 0")
        _check(self.prior_sigma > 0 and self.posterior_sigma_init > 0, "prior_sigma and posterior_sigma_init must be positive")
        _check(self.kl_beta >= 0, "kl_beta must be >= 0")
        _check(self.mc_samples >= 1, "mc_samples must be >= 1")
        _check(self.set_draws >= 0, "set_draws must be >= 0 (0: take it from the sets)")
        _check(self.head in ("linear", "bayesian"), f"head must be 'linear' or 'bayesian', not {self.head!r}")
        _check(self.objective in ("ce", "smooth", "bce"), f"objective must be 'ce', 'smooth' or 'bce', not {self.objective!r}")


@dataclass
class TrainConfig:
    """The optimisation loop, evaluation cadence, devices and logging."""

    data: str = ""
    out_dir: str = ""
    init_from: str = "scratch"  # 'scratch' | 'resume' | gpt2* | a local Hugging Face folder
    max_iters: int = 2000
    batch_size: int = 12
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int = 0  # 0 = max_iters
    decay_lr: bool = True
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    eval_interval: int = 250
    eval_iters: int = 200
    log_interval: int = 10
    ckpt_interval: int = 0  # 0 = every eval_interval
    keep_checkpoints: int = 2  # the last N checkpoints are kept, and the best (lowest val ce) besides
    eval_only: bool = False
    device: str = "auto"  # 'auto' | 'cpu' | 'cuda' | 'cuda:N' | 'mps'
    dtype: str = "auto"  # 'auto' (bf16 on capable GPUs, else fp16 on GPU, fp32 on CPU) | 'float32' | 'bfloat16' | 'float16'
    compile: bool = False
    seed: int = 1337
    backend: str = "auto"  # DDP backend: 'auto' (nccl on GPU, gloo on CPU)
    progress: str = "auto"  # 'auto' (a bar in a terminal) | 'bar' | 'lines'
    tensorboard: bool = True  # when tensorboard is installed
    wandb_log: bool = False
    wandb_project: str = "gptvariants"
    wandb_run_name: str = ""

    def validate(self) -> None:
        _check(self.max_iters >= 0, "max_iters must be >= 0")
        _check(self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1")
        _check(self.batch_size > 0 and self.gradient_accumulation_steps > 0, "batch_size and gradient_accumulation_steps must be positive")
        _check(self.learning_rate > 0 and self.min_lr >= 0, "learning_rate must be > 0 and min_lr >= 0")
        _check(self.eval_interval > 0 and self.eval_iters > 0 and self.log_interval > 0, "eval_interval, eval_iters and log_interval must be positive")
        _check(self.dtype in ("auto", "float32", "bfloat16", "float16"), f"dtype must be auto, float32, bfloat16 or float16, not {self.dtype!r}")
        _check(self.progress in ("auto", "bar", "lines"), "progress must be auto, bar or lines")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    SECTIONS = ("model", "objective", "train")

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {s: dataclasses.asdict(getattr(self, s)) for s in self.SECTIONS}

    @classmethod
    def from_dict(cls, d: dict[str, dict[str, Any]]) -> "Config":
        cfg = cls()
        for section, values in d.items():
            for k, v in values.items():
                _set(cfg, k, v, source=f"[{section}]")
        return cfg

    def validate(self) -> None:
        self.model.validate()
        self.objective.validate()
        self.train.validate()

    def save(self, path: Path) -> None:
        from .atomic import atomic_write

        atomic_write(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message says which and why."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _key_index() -> dict[str, str]:
    """Flat key -> section name; keys are unique across sections by construction."""
    index: dict[str, str] = {}
    for section in Config.SECTIONS:
        for f in dataclasses.fields(Config.__dataclass_fields__[section].default_factory()):
            assert f.name not in index, f"config key {f.name} appears twice"
            index[f.name] = section
    return index


KEYS = _key_index()


def _field_type(section_obj: Any, key: str) -> type:
    hints = typing.get_type_hints(type(section_obj))
    t = hints[key]
    if isinstance(t, types.UnionType) or typing.get_origin(t) is typing.Union:
        t = next(a for a in typing.get_args(t) if a is not type(None))
    return t


def _coerce(value: Any, t: type, key: str) -> Any:
    if isinstance(value, str) and t is not str:
        text = value.strip()
        if t is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{key} expects true/false, got {value!r}")
        try:
            return t(float(text)) if t is int and ("e" in text.lower() or "." in text) else t(text)
        except ValueError:
            raise ConfigError(f"{key} expects {t.__name__}, got {value!r}") from None
    if t is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if t is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, t) or (t is int and isinstance(value, bool)):
        raise ConfigError(f"{key} expects {t.__name__}, got {value!r}")
    return value


def unknown_key_message(key: str) -> str:
    close = difflib.get_close_matches(key, list(KEYS), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see `gptv train --help-config`"
    return f"unknown config key {key!r}{hint}"


def _set(cfg: Config, key: str, value: Any, source: str = "") -> None:
    key = key.replace("-", "_")
    if key not in KEYS:
        raise ConfigError(unknown_key_message(key) + (f" (in {source})" if source else ""))
    section = getattr(cfg, KEYS[key])
    setattr(section, key, _coerce(value, _field_type(section, key), key))


def parse_overrides(args: list[str]) -> dict[str, str]:
    """``['--max_iters=100', '--compile']`` -> ``{'max_iters': '100', 'compile': 'true'}``."""
    out: dict[str, str] = {}
    for arg in args:
        if not arg.startswith("--"):
            raise ConfigError(f"overrides are written --key=value, got {arg!r}")
        key, sep, value = arg[2:].partition("=")
        out[key.replace("-", "_")] = value if sep else "true"
    return out


def _flatten_toml(data: dict[str, Any], path: Path) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict):
            if k not in Config.SECTIONS:
                raise ConfigError(f"{path}: unknown table [{k}]; use [model], [objective] or [train], or flat keys")
            flat.update(v)
        else:
            flat[k] = v
    return flat


def load_config(
    variant: str | None = None,
    file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Resolve a Config from a variant name, an optional TOML file and overrides, and validate it."""
    from .variants import get_variant

    file_values: dict[str, Any] = {}
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        with open(path, "rb") as f:
            try:
                file_values = _flatten_toml(tomllib.load(f), path)
            except tomllib.TOMLDecodeError as e:
                raise ConfigError(f"{path}: invalid TOML: {e}") from None
    overrides = dict(overrides or {})
    name = variant or overrides.pop("variant", None) or file_values.pop("variant", None) or "baseline"
    overrides.pop("variant", None)
    file_values.pop("variant", None)

    cfg = Config()
    spec = get_variant(name)
    cfg.objective.variant = spec.name
    cfg.objective.head = spec.head
    cfg.objective.objective = spec.objective
    for k, v in spec.defaults.items():
        _set(cfg, k, v, source=f"variant {spec.name}")
    for k, v in file_values.items():
        _set(cfg, k, v, source=str(file))
    for k, v in overrides.items():
        _set(cfg, k, v, source="command line")
    apply_size(cfg.model, explicit=set(file_values) | set(overrides))
    cfg.validate()
    return cfg


def apply_size(model: ModelConfig, explicit: set[str] = frozenset()) -> None:
    """Fill n_layer/n_head/n_embd from ``model.size`` unless they were given explicitly."""
    if not model.size:
        return
    if model.size not in MODEL_SIZES:
        close = difflib.get_close_matches(model.size, list(MODEL_SIZES), n=3)
        raise ConfigError(f"unknown model size {model.size!r}; known: {', '.join(MODEL_SIZES)}" + (f" (did you mean {close[0]}?)" if close else ""))
    for key, value in zip(("n_layer", "n_head", "n_embd"), MODEL_SIZES[model.size]):
        if key not in explicit:
            setattr(model, key, value)
