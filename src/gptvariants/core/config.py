"""Typed run configuration: dataclasses, a TOML (or saved config.json) file, and ``--key=value`` overrides.

Resolution order (later wins): dataclass defaults < the variant's defaults < the file
< command-line overrides. Keys are flat and unique across sections and follow nanoGPT's
names where one exists (``max_iters``, ``n_layer``, ``learning_rate`` ...), so a TOML file
may be written flat or with ``[model]``, ``[objective]`` and ``[train]`` tables.

Heads and objectives declare their own keys (a ``Config`` dataclass per component in
components.py, which imports no torch, so a config resolves and fails fast without it);
``ObjectiveConfig`` holds one of each and reads and writes them as flat attributes, so
``cfg.objective.prior_sigma`` and the saved config.json look as they always did.

Every key declares its constraint (``checks.Int``/``Float``/``Bool``/``Choice``/...) in its
field's metadata; ``validate_config`` applies all of them, then the rules that tie keys
together, in one place. Values from text are parsed by the same checks, so ``n_layer=2.5``
and ``min_lr=inf`` fail wherever they come from, naming the key and the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import sys
from collections.abc import Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..common.atomic import atomic_write
from ..common.checks import Bool, Choice, Device, Float, Int, Text
from ..common.errors import GptvError
from ..common.inputs import InputError, read_json, read_text
from .components import HEAD_SPECS, OBJECTIVE_SPECS
from .hf_shape import apply_hf_shape
from .keys import BIG, key
from .variants import REGISTRY, get_variant

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

# bounds on the model's shape that no real run comes near (GPT-3 175B: 96 layers, 96 heads, 12288 wide);
# the memory check (sizing.py) refuses what is inside them but cannot fit
MAX_LAYERS, MAX_HEADS, MAX_EMBD, MAX_BLOCK, MAX_VOCAB = 1000, 1024, 65536, 1 << 20, (1 << 32) - 2


def _heads() -> list[str]:

    return list(HEAD_SPECS)


def _objectives() -> list[str]:

    return list(OBJECTIVE_SPECS)


@dataclass
class ModelConfig:
    """The GPT backbone. ``vocab_size`` is taken from the data when left at 0."""

    size: str = key(
        "",
        Choice(lambda: ["", *MODEL_SIZES]),
        "a named model size (MODEL_SIZES) that sets n_layer/n_head/n_embd unless they are given",
    )
    n_layer: int = key(4, Int(1, MAX_LAYERS), "transformer blocks")
    n_head: int = key(4, Int(1, MAX_HEADS), "attention heads per block (n_embd must be divisible by it)")
    n_embd: int = key(128, Int(1, MAX_EMBD), "width of the residual stream")
    block_size: int = key(64, Int(1, MAX_BLOCK), "context length in tokens")
    vocab_size: int = key(0, Int(0, MAX_VOCAB), "vocabulary size; 0 = the data's")
    dropout: float = key(
        0.0, Float(0.0, 1.0, hi_open=True), "dropout probability in the backbone (MC dropout needs > 0)"
    )
    bias: bool = key(True, Bool(), "biases in Linear and LayerNorm layers (GPT-2: true)")
    gelu: str = key(
        "tanh",
        Choice(("tanh", "exact")),
        "GELU form: tanh (GPT-2, needed to match its weights) or exact (erf; ~10% faster on CPU)",
    )
    tie_weights: bool = key(True, Bool(), "the token embedding shares the output layer's (mean) weight")

    def validate(self) -> None:
        _validate_section(self)


def component_configs() -> dict[type, Any]:
    """A default instance of every registered head's and objective's ``Config``, by class (classes
    shared by several components appear once)."""
    classes = [s.Config for s in [*HEAD_SPECS.values(), *OBJECTIVE_SPECS.values()]]
    return {cls: cls() for cls in dict.fromkeys(classes)}


@dataclass
class ObjectiveConfig:
    """Head and objective hyper-parameters; a variant fills in its own defaults.

    The keys shared by every head and objective are fields here; each component's own keys live in
    its ``Config`` (``parts``) and read and write as attributes of this object."""

    variant: str = key(
        "baseline",
        Choice(lambda: list(REGISTRY)),
        "the variant (gptv variants): fills head, objective and its own defaults",
    )
    head: str = key("", Choice(_heads), "output layer (a heads.HEADS name; set by the variant)")
    objective: str = key(
        "", Choice(_objectives), "training objective (an objectives.OBJECTIVES name; set by the variant)"
    )
    output_bias: bool = key(False, Bool(), "a bias in the output layer (sigmoid heads start it at -log V)")
    kl_beta: float = key(1.0, Float(0.0), "loss = objective + kl_beta * KL / N_train_tokens (stochastic heads)")
    kl_warmup_iters: int = key(0, Int(0, BIG), "steps over which the KL weight ramps linearly from 0 to kl_beta")
    mc_samples: int = key(8, Int(1, 10_000), "Monte-Carlo draws for prediction with a stochastic head")
    targets: str = key("", Text(), "cached teacher sets DATA/targets/NAME (gptv targets); '' = the true token only")
    teacher: str = key("", Text(), "online teacher spec, run inside the training loop (ngram:N, ckpt:RUN, ...)")
    loss_chunk_size: int = key(0, Int(0, BIG), "rows of (N, V) logits per loss chunk; 0 = about 32 MiB of fp32")
    parts: dict[type, Any] = field(default_factory=component_configs, repr=False)

    def _owner(self, name: str) -> Any:
        """The component config that declares ``name``, or None (``parts`` is absent while unpickling)."""
        for part in self.__dict__.get("parts", {}).values():
            if name in part.__dataclass_fields__:
                return part
        return None

    def __getattr__(self, name: str) -> Any:  # only for names that are not fields: a component's keys
        owner = None if name.startswith("__") else self._owner(name)
        if owner is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(owner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        owner = None if name in ObjectiveConfig.__dataclass_fields__ else self._owner(name)
        if owner is not None:
            setattr(owner, name, value)
        else:
            object.__setattr__(self, name, value)

    def part(self, component: Any) -> Any:
        """The ``Config`` instance of a head or objective class, or of its ``ComponentSpec`` (its
        defaults if registered since)."""
        return self.parts.setdefault(component.Config, component.Config())

    def head_config(self) -> Any:
        return self.part(HEAD_SPECS[self.head])

    def objective_config(self) -> Any:
        return self.part(OBJECTIVE_SPECS[self.objective])

    def validate(self) -> None:
        _validate_section(self)


@dataclass
class TrainConfig:
    """The optimisation loop, evaluation cadence, devices and logging."""

    data: str = key("", Text(), "prepared data folder (gptv prepare)")
    out_dir: str = key("", Text(), "run folder to write (--out)")
    init_from: str = key("scratch", Text(), "scratch | resume | gpt2* | a local Hugging Face folder")
    max_iters: int = key(2000, Int(0), "optimisation steps in all")
    batch_size: int = key(12, Int(1, BIG), "sequences per micro-batch")
    gradient_accumulation_steps: int = key(
        1, Int(1, BIG), "micro-batches per step, all processes together (see fit_world_size)"
    )
    learning_rate: float = key(1e-3, Float(0.0, lo_open=True), "peak learning rate (AdamW)")
    min_lr: float = key(1e-4, Float(0.0), "learning rate at the end of the cosine decay")
    warmup_iters: int = key(100, Int(0), "steps of linear learning-rate warm-up")
    lr_decay_iters: int = key(0, Int(0), "steps of cosine decay; 0 = max_iters")
    decay_lr: bool = key(True, Bool(), "decay the learning rate (cosine) after the warm-up")
    weight_decay: float = key(0.1, Float(0.0), "AdamW weight decay")
    beta1: float = key(0.9, Float(0.0, 1.0, hi_open=True), "AdamW beta1")
    beta2: float = key(0.99, Float(0.0, 1.0, hi_open=True), "AdamW beta2")
    grad_clip: float = key(1.0, Float(0.0), "clip the gradient norm to this; 0 = no clipping")
    eval_interval: int = key(250, Int(1), "steps between evaluations")
    eval_iters: int = key(200, Int(1), "batches per evaluation")
    log_interval: int = key(10, Int(1), "steps between log lines")
    ckpt_interval: int = key(0, Int(0), "steps between checkpoints; 0 = every eval_interval")
    keep_checkpoints: int = key(2, Int(1, 1000), "the last N checkpoints are kept, and the best (lowest val ce)")
    eval_only: bool = key(False, Bool(), "evaluate the checkpoint and stop (this invocation only; never saved)")
    device: str = key("auto", Device(), "auto | cpu | cuda | cuda:N | mps")
    dtype: str = key(
        "auto",
        Choice(("auto", "float32", "bfloat16", "float16")),
        "auto (bf16 on capable GPUs, else fp16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16",
    )
    compile: bool = key(False, Bool(), "torch.compile the model")
    seed: int = key(1337, Int(0), "seed of initialisation, batches and draws")
    backend: str = key(
        "auto", Choice(("auto", "nccl", "gloo")), "DDP backend: auto (nccl on GPU, gloo on CPU) | nccl | gloo"
    )
    progress: str = key("auto", Choice(("auto", "bar", "lines")), "auto (a bar in a terminal) | bar | lines")
    tensorboard: bool = key(True, Bool(), "TensorBoard logs in the run folder (when tensorboard is installed)")
    wandb_log: bool = key(False, Bool(), "log to Weights & Biases")
    wandb_project: str = key("gptvariants", Text(), "W&B project")
    wandb_run_name: str = key("", Text(), "W&B run name")

    def validate(self) -> None:
        _validate_section(self)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    SECTIONS = ("model", "objective", "train")

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """{section: {flat key: value}}, the layout of config.json."""
        return {s: {f.name: getattr(h, f.name) for h, f in section_fields(getattr(self, s))} for s in self.SECTIONS}

    @classmethod
    def from_dict(cls, d: dict[str, dict[str, Any]], source: str = "") -> Config:
        cfg = cls()
        for section, values in d.items():
            if section not in cls.SECTIONS or not isinstance(values, dict):
                raise ConfigError(_where(source) + f"unknown section {section!r}; expected {', '.join(cls.SECTIONS)}")
            for k, v in values.items():
                set_key(cfg, k, v, source=source or f"[{section}]")
        return cfg

    def validate(self) -> None:
        validate_config(self)

    def save(self, path: Path) -> None:
        """The run's config.json; keys of one invocation (``PER_INVOCATION``) are saved at their defaults."""
        saved = self.to_dict()
        for k in PER_INVOCATION:
            saved[KEYS[k]][k] = getattr(getattr(Config(), KEYS[k]), k)
        atomic_write(Path(path), json.dumps(saved, indent=2) + "\n")


# flags that ask one invocation for something (evaluate only) and say nothing about the run: never
# saved with it, so that a later `gptv train --resume` does what its own command line asks
PER_INVOCATION = frozenset({"eval_only"})


class ConfigError(GptvError, ValueError):
    """A configuration key or value is invalid; the message says which and why."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def section_fields(section_obj: Any) -> list[tuple[Any, dataclasses.Field]]:
    """(holder, field) of every key of a section: its own fields, then its components' (``parts``)."""
    own = [(section_obj, f) for f in dataclasses.fields(section_obj) if f.name != "parts"]
    parts = getattr(section_obj, "parts", {}) if isinstance(section_obj, ObjectiveConfig) else {}
    return own + [(part, f) for part in parts.values() for f in dataclasses.fields(part)]


def _key_index() -> dict[str, str]:
    """Flat key -> section name, over the components registered now; a key declared twice is an error."""
    index: dict[str, str] = {}
    owners: dict[str, str] = {}
    cfg = Config()
    for section in Config.SECTIONS:
        for holder, f in section_fields(getattr(cfg, section)):
            owner = type(holder).__qualname__
            if f.name in index:
                raise ConfigError(f"config key {f.name} is declared twice, by {owners[f.name]} and {owner}")
            index[f.name], owners[f.name] = section, owner
    return index


class _Keys(Mapping[str, str]):
    """The live flat key -> section index (heads and objectives may be registered after import)."""

    def __getitem__(self, name: str) -> str:
        return _key_index()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(_key_index())

    def __len__(self) -> int:
        return len(_key_index())

    def __contains__(self, name: object) -> bool:
        return name in _key_index()


KEYS: Mapping[str, str] = _Keys()


def key_check(section_obj: Any, name: str) -> Any:
    """The constraint of a key: its declared check, or one implied by its type (non-negative int, finite float)."""
    f = next(f for _, f in section_fields(section_obj) if f.name == name)
    if "check" in f.metadata:
        return f.metadata["check"]
    default = f.default
    if isinstance(default, bool):
        return Bool()
    return Int(0) if isinstance(default, int) else Float() if isinstance(default, float) else Text()


def _where(source: str) -> str:
    """'FILE: ' for values read from a file; nothing for the command line or a variant."""
    from_file = source and source != "command line" and not source.startswith(("variant ", "["))
    return f"{source}: " if from_file else ""


def _check_key(section_obj: Any, name: str, value: Any, source: str = "") -> Any:
    try:
        return key_check(section_obj, name)(value)
    except ValueError as e:
        suffix = f" ({source})" if source and not _where(source) else ""
        raise ConfigError(f"{_where(source)}{name} {str(e).replace('expected', 'expects', 1)}{suffix}") from None


def _validate_section(section_obj: Any) -> None:
    for holder, f in section_fields(section_obj):
        _check_key(section_obj, f.name, getattr(holder, f.name))


def validate_config(cfg: Config) -> None:
    """Every key against its constraint, then the rules that tie keys together."""
    _key_index()  # keys stay unique across sections and components
    for section in Config.SECTIONS:
        _validate_section(getattr(cfg, section))
    m = cfg.model
    _check(m.n_embd % m.n_head == 0, f"n_embd ({m.n_embd}) must be divisible by n_head ({m.n_head})")


def config_help(variant: str | None = None) -> str:
    """``gptv train --help-config``: every key with its section, value and description; with
    ``variant``, the values that variant runs with (marked where they differ from the base default)."""
    base = Config()
    cfg = load_config(variant) if variant else base
    head = f"of variant {variant}" if variant else "with their base defaults (--variant V: the values V runs with)"
    lines = [f"config keys {head}; --key=value, or in a TOML file flat or under [model]/[objective]/[train]:"]
    for name, section in KEYS.items():
        holder, f = next((h, f) for h, f in section_fields(getattr(cfg, section)) if f.name == name)
        value, default = getattr(getattr(cfg, section), name), getattr(getattr(base, section), name)
        described = f.metadata.get("help") or f"a key of {type(holder).__qualname__.split('.')[0]}"
        note = f" [{variant}; base {default!r}]" if variant and value != default else ""
        constraint = key_check(getattr(cfg, section), name).describe()
        lines.append(f"  {name:<28} {section:<10} {value!r:<12} {described}: {constraint}{note}")
    return "\n".join(lines)


def unknown_key_message(key: str) -> str:
    close = difflib.get_close_matches(key, list(KEYS), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see `gptv train --help-config`"
    return f"unknown config key {key!r}{hint}"


def set_key(cfg: Config, key: str, value: Any, source: str = "") -> None:
    """Set flat ``key`` of ``cfg`` from ``value`` (text or typed), checked; ConfigError naming ``source``."""
    key = key.replace("-", "_")
    index = _key_index()
    if key not in index:
        suffix = f" (in {source})" if source and not _where(source) else ""
        raise ConfigError(_where(source) + unknown_key_message(key) + suffix)
    section = getattr(cfg, index[key])
    setattr(section, key, _check_key(section, key, value, source))


def parse_overrides(args: list[str]) -> dict[str, str]:
    """``['--max_iters=100', '--compile']`` -> ``{'max_iters': '100', 'compile': 'true'}``."""
    out: dict[str, str] = {}
    for arg in args:
        if not arg.startswith("--"):
            raise ConfigError(f"overrides are written --key=value, got {arg!r}")
        key, sep, value = arg[2:].partition("=")
        out[key.replace("-", "_")] = value if sep else "true"
    return out


def _flatten(data: dict[str, Any], path: Path, text: str | None = None) -> dict[str, Any]:
    """The flat keys of a file's top level and tables. In a TOML file (``text``, its source), a
    key set twice (at the top and in a table) or in another section's table is a ConfigError
    naming the file and both places: one value silently winning is a trap. A run's config.json
    (no ``text``) is read as written, so runs saved by earlier versions still load."""
    flat: dict[str, Any] = {}
    where: dict[str, str] = {}
    index = _key_index()
    for k, v in data.items():
        if isinstance(v, dict):
            if k not in Config.SECTIONS:
                raise ConfigError(f"{path}: unknown table [{k}]; use [model], [objective] or [train], or flat keys")
            if text is None:
                flat.update(v)
                continue
            for key, value in v.items():
                if index.get(key, k) != k:
                    raise ConfigError(
                        f"{path}: {key} is in [{k}]{_line(text, key, k)} but belongs in [{index[key]}]; move it there "
                        "or write it at the top, before any table"
                    )
                _put(flat, where, key, value, f"in [{k}]{_line(text, key, k)}", path)
        else:
            _put(flat, where, k, v, f"at the top{_line(text, k, None)}", path)
    return flat


def _put(flat: dict[str, Any], where: dict[str, str], key: str, value: Any, place: str, path: Path) -> None:
    if key in where:
        raise ConfigError(f"{path}: {key} is set twice, {where[key]} and {place}; keep one")
    flat[key], where[key] = value, place


def _line(text: str | None, key: str, table: str | None) -> str:
    """' (line N)': where ``key`` is assigned in ``table`` (None: the top level) of TOML ``text``."""
    current: str | None = None
    for n, line in enumerate((text or "").splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("["):
            current = stripped.strip("[]").strip()
        elif current == table and re.match(rf"""["']?{re.escape(key)}["']?\s*=""", stripped):
            return f" (line {n})"
    return ""


def read_config_file(file: str | Path) -> dict[str, Any]:
    """The flat key -> value pairs of a TOML file, or of a run's saved config.json (``*.json``)."""

    path = Path(file)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        if path.suffix == ".json":
            return _flatten(read_json(path), path)
        text = read_text(path)
        return _flatten(tomllib.loads(text), path, text)
    except InputError as e:
        raise ConfigError(str(e)) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None


def load_config(
    variant: str | None = None,
    file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Resolve a Config from a variant name, an optional TOML/config.json file and overrides, and validate it."""

    file_values = read_config_file(file) if file is not None else {}
    overrides = dict(overrides or {})
    from_file = file_values.pop("variant", None)
    from_overrides = overrides.pop("variant", None)
    name = variant or from_overrides or from_file or "baseline"
    where = "command line" if variant or from_overrides else str(file) if from_file else "default"

    cfg = Config()
    try:
        spec = get_variant(name if isinstance(name, str) else repr(name))
    except ValueError as e:
        raise ConfigError(f"{e} ({where})") from None
    cfg.objective.variant = spec.name
    cfg.objective.head = spec.head
    cfg.objective.objective = spec.objective
    for k, v in spec.defaults.items():
        set_key(cfg, k, v, source=f"variant {spec.name}")
    for k, v in file_values.items():
        set_key(cfg, k, v, source=str(file))
    for k, v in overrides.items():
        set_key(cfg, k, v, source="command line")
    explicit = set(file_values) | set(overrides)
    apply_size(cfg.model, explicit=explicit)
    if cfg.train.init_from not in ("scratch", "resume"):  # a pretrained folder brings its own shape
        if "size" in explicit:
            explicit |= {"n_layer", "n_head", "n_embd"}  # a conflicting size is reported by the weight loader
        apply_hf_shape(cfg.model, cfg.train.init_from, explicit)
    cfg.validate()
    return cfg


def apply_size(model: ModelConfig, explicit: AbstractSet[str] = frozenset()) -> None:
    """Fill n_layer/n_head/n_embd from ``model.size`` unless they were given explicitly."""
    if not model.size:
        return
    if model.size not in MODEL_SIZES:
        close = difflib.get_close_matches(model.size, list(MODEL_SIZES), n=3)
        raise ConfigError(
            f"unknown model size {model.size!r}; known: {', '.join(MODEL_SIZES)}"
            + (f" (did you mean {close[0]}?)" if close else "")
        )
    for name, value in zip(("n_layer", "n_head", "n_embd"), MODEL_SIZES[model.size]):
        if name not in explicit:
            setattr(model, name, value)
