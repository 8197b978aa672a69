"""What ``gptv serve`` serves: the runs named on its command line and, for an experiment folder,
its report files. Nothing here imports the web server, so ``gptv`` starts without it.

A path is a run (it holds ``checkpoint.json``), a folder of runs (an experiment's ``runs/``), or
an experiment folder (``report.md`` beside ``runs/``). Report files are an allowlist built once,
at startup, of plain files inside the experiment folder: requests name an entry, never a path,
so no request can reach a file outside it (``..``, absolute paths and symlinks that lead out
are not in the list).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...common.errors import GptvError
from ...predict.conformal import fit_flags, fitted_alphas
from ...predict.prediction import Prediction, temperature_key
from ...store.checkpoint import POINTER
from ...store.run import RunFolder
from ..api import LanguageModel, load

REPORT_SUFFIXES = (".md", ".png", ".json", ".csv")


class ServeError(GptvError, ValueError):
    """A path on the command line that holds no run, or a request for something a run does not have."""


@dataclass
class Report:
    """An experiment's report: ``report.md`` and its plots and tables, by file name."""

    root: Path
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def plots(self) -> list[str]:
        return sorted(n for n in self.files if n.endswith(".png"))

    @classmethod
    def scan(cls, root: Path) -> Report | None:
        """The report files directly inside ``root`` (None without a report.md); files whose real
        path leaves ``root`` (symlinks out) are left out."""
        root = root.resolve()
        if not (root / "report.md").is_file():
            return None
        files = {}
        for p in sorted(root.iterdir()):
            real = p.resolve()
            if p.suffix in REPORT_SUFFIXES and real.is_file() and real.parent == root:
                files[p.name] = real
        return cls(root, files)


def discover(paths: list[str | Path]) -> tuple[dict[str, Path], Report | None]:
    """Runs by display name (the folder name; parent/name when two share a name) and the report
    of the first experiment folder among ``paths``. ServeError names a path that holds no run."""
    found: list[Path] = []
    report: Report | None = None
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise ServeError(f"{path} is not a folder (give a run folder, a folder of runs or an experiment folder)")
        if RunFolder.is_run(path):
            found.append(path)
            continue
        inner = path / "runs" if (path / "runs").is_dir() else path
        runs = [r.path for r in RunFolder.find(inner)]
        if not runs:
            raise ServeError(
                f"{path} holds no run: no {POINTER} in it or in its subfolders (train one with gptv train --out)"
            )
        found.extend(runs)
        # the report of an experiment sits beside its runs/ folder
        experiment = path.parent if inner == path and path.name == "runs" else path
        report = report or Report.scan(experiment)
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return _names(unique), report


def _names(runs: list[Path]) -> dict[str, Path]:
    counts: dict[str, int] = {}
    for p in runs:
        counts[p.name] = counts.get(p.name, 0) + 1
    return {(p.name if counts[p.name] == 1 else f"{p.parent.name}/{p.name}"): p for p in runs}


@dataclass
class Run:
    """A loaded run, shared by every request: its model is loaded once."""

    name: str
    path: Path
    lm: LanguageModel
    step: int | None

    @property
    def bayesian(self) -> bool:
        return bool(self.lm.model.head.stochastic)

    @property
    def sigmoid(self) -> bool:
        return bool(self.lm.model.objective.sigmoid)

    def info(self) -> dict[str, Any]:
        """What the page and ``GET /api/runs`` show of a run (its name, not where it lies on the server)."""
        m, o = self.lm.config.model, self.lm.config.objective
        return {
            "name": self.name,
            "variant": o.variant,
            "head": o.head,
            "objective": o.objective,
            "bayesian": self.bayesian,
            "sigmoid": self.sigmoid,
            "mc_samples": o.mc_samples,
            "vocab_size": m.vocab_size,
            "block_size": m.block_size,
            "n_layer": m.n_layer,
            "n_head": m.n_head,
            "n_embd": m.n_embd,
            "params": self.lm.model.num_params(),
            "tokenizer": self.lm.tokenizer.name,
            "step": self.step,
            "conformal": self.conformal_alphas(),
        }  # never the path: a browser needs the name only, and the server's layout is not its business

    def conformal_alphas(self) -> dict[str, list[float]]:
        """The alphas of the LAC sets ``gptv conformal`` fitted for this run, by prediction key
        ('default'; 'point': a Bayesian head's posterior mean; or a method's name). Read on each
        call: a fit made while the server runs is used without a restart."""
        return fitted_alphas(self.path)

    def check_conformal(self, alpha: float, method: str | None = None, mc_samples: int | None = None) -> None:
        """ServeError naming the alpha and the command that fits it, unless this run has a LAC set at
        ``alpha`` for the prediction ``method`` and ``mc_samples`` ask for (``LanguageModel.score``'s
        ``conformal``). The message names the run, not its folder: the server's layout stays its own."""
        prediction = self.lm.prediction.but(method=method, mc_samples=mc_samples)
        key = temperature_key(self.lm.runs, prediction)
        fitted = [f"{a:g}" for a in self.conformal_alphas().get(key, [])]
        if f"{alpha:g}" in fitted:
            return
        raise ServeError(
            f"run {self.name!r} has no conformal set at alpha {alpha:g} for the {key!r} prediction "
            f"({'fitted: alpha ' + ', '.join(fitted) if fitted else 'none fitted'}): "
            f"fit it with `gptv conformal RUN --alpha {alpha:g}{fit_flags(key)}` (RUN: the folder of run {self.name!r})"
        )


def load_runs(paths: dict[str, Path], device: str = "cpu", dtype: str = "float32") -> dict[str, Run]:
    """Every run's model and tokenizer, loaded once (CheckpointError names a broken one); ``dtype``:
    the weights every prediction runs in (``prediction.DTYPES``)."""
    p = Prediction(dtype=dtype)
    return {
        name: Run(name, path, load(path, device=device, prediction=p), RunFolder(path).step)
        for name, path in paths.items()
    }
