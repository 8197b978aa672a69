"""A run folder on disk: the files ``gptv train`` writes and every command reads."""

from __future__ import annotations

from pathlib import Path

from ..common.checks import Int, Text
from ..common.inputs import InputError, read_json, require
from ..data.dataset import read_tokenizer

# the run folder's JSON files that sample/eval/train --resume read before anything else
RUN_JSON_FILES = ("checkpoint.json", "config.json", "data.json", "tokenizer_meta.json")


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
                read_tokenizer(run_dir)
