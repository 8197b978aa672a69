"""A run folder on disk: the files ``gptv train`` writes and every command reads.

``RunFolder`` is the one answer to "is this a run, at which step, with which config, checkpoints,
fitted temperatures, Laplace posterior and metrics records"; it reads files, never a model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..common.checks import Int, Text
from ..common.inputs import InputError, read_json, require
from ..core.config import Config
from ..data.tokenizers import load_tokenizer
from .checkpoint import CKPT_RE, POINTER, checkpoints, latest_checkpoint, pointer_step
from .records import METRICS_FILE, load_records

# the run folder's JSON files that sample/eval/train --resume read before anything else
RUN_JSON_FILES = ("checkpoint.json", "config.json", "data.json", "tokenizer_meta.json")
CONFIG_FILE = "config.json"
CALIBRATION_FILE = "calibration.json"  # temperatures fitted by `gptv calibrate`, by method
CONFORMAL_FILE = "conformal.json"  # conformal set thresholds fitted by `gptv conformal`, by method
LAPLACE_FILE, LAPLACE_META = "laplace.safetensors", "laplace.json"  # the posterior `gptv laplace` fits
LAPLACE_FILES = (LAPLACE_FILE, LAPLACE_META)
DENSITY_FILE, DENSITY_META = "density.safetensors", "density.json"  # the feature density `gptv density` fits


def check_run_files(run_dir: Path) -> None:
    """Check the JSON files of a run folder that exist (missing ones are reported by their readers):
    each must parse, checkpoint.json must name a checkpoint folder inside the run, and the
    tokenizer must load."""

    run_dir = Path(run_dir)
    for name in RUN_JSON_FILES:
        path = run_dir / name
        if path.is_file():
            value = read_json(path)
            if name == "checkpoint.json":
                folder = require(value, "dir", Text(), path)
                require(value, "step", Int(0, text=False), path)
                if not folder or Path(folder).name != folder or folder in (".", ".."):
                    raise InputError(f"{path}: 'dir' must name a checkpoint folder inside {run_dir}, not {folder!r}")
            elif name == "tokenizer_meta.json":
                load_tokenizer(run_dir)


@dataclass(frozen=True)
class RunFolder:
    """The folder ``gptv train --out`` wrote: checkpoint.json pointing at ckpt-<step>/, config.json,
    metrics.jsonl, and what later commands add (calibration.json, laplace.*, eval/)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @staticmethod
    def is_run(path: str | Path) -> bool:
        """Whether ``path`` holds a run: its checkpoint.json exists (intact or not)."""
        return (Path(path) / POINTER).is_file()

    @property
    def step(self) -> int | None:
        """The step checkpoint.json names (None without a readable one); reads no checkpoint."""
        return pointer_step(self.path)

    def checkpoint(self) -> Path:
        """The newest checkpoint that verifies (CheckpointError when none does)."""
        return latest_checkpoint(self.path)

    def checkpoint_step(self) -> int:
        """The step of ``checkpoint()``: the pointer's step unless that checkpoint is damaged."""
        match = CKPT_RE.match(self.checkpoint().name)
        assert match is not None  # checkpoint() only returns folders named by the checkpoint pattern
        return int(match.group(1))

    def checkpoints(self) -> list[tuple[int, Path]]:
        """(step, folder) of every ckpt-<step> folder, by step."""
        return checkpoints(self.path)

    def data_path(self) -> Path:
        """The prepared data folder the run trained on, as its data.json records it (InputError
        naming the file when it records none, or the folder when that is gone)."""
        info = self.path / "data.json"
        recorded = read_json(info).get("path") if info.is_file() else None
        if not isinstance(recorded, str) or not recorded:
            raise InputError(f"{info} names no data folder: pass --data DIR")
        if not Path(recorded).is_dir():
            raise InputError(f"the run's data folder {recorded} (recorded in {info}) is gone: pass --data DIR")
        return Path(recorded)

    def config(self) -> Config:
        """The run's saved config.json (InputError naming the file when it is missing or damaged)."""
        path = self.path / CONFIG_FILE
        return Config.from_dict(read_json(path), source=str(path))

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    def records(self, kind: str | None = None) -> list[dict[str, Any]]:
        """metrics.jsonl's records ("train" or "eval" ones when ``kind`` is given); [] without the file."""
        return load_records(self.metrics_file, kind)

    def ms_per_step(self) -> list[float]:
        """The training step times metrics.jsonl recorded."""
        return [r["ms_per_step"] for r in self.records("train")]

    @property
    def calibration_file(self) -> Path:
        return self.path / CALIBRATION_FILE

    def temperature(self, key: str) -> float:
        """The temperature ``gptv calibrate`` fitted for ``key`` (a method name, or a point estimate's key), else 1."""
        path = self.calibration_file
        if not path.is_file():
            return 1.0
        try:
            fitted = json.loads(path.read_text(encoding="utf-8"))["temperature"]
            return float(fitted.get(key, 1.0))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise InputError(f"{path} is unreadable ({e}); delete it or rerun `gptv calibrate`") from None

    @property
    def laplace_files(self) -> tuple[Path, ...]:
        return tuple(self.path / name for name in LAPLACE_FILES)

    def has_laplace(self) -> bool:
        """Whether ``gptv laplace`` left its posterior here (both files)."""
        return all(p.is_file() for p in self.laplace_files)

    @classmethod
    def find(cls, folder: str | Path) -> list[RunFolder]:
        """The runs directly inside ``folder``, by name."""
        return [cls(p) for p in sorted(Path(folder).iterdir()) if p.is_dir() and cls.is_run(p)]
