"""CPU threads of a ``gptv`` process: how idle ones wait, how many there are, and a word when the machine is busy.

torch starts one OpenMP thread per core, and by default an idle OpenMP thread spins for a while
before it sleeps. Beside another CPU job, a step then waits at every operation for a thread that
is descheduled while its partner spins: the experiment's steps ran 2-13x slower beside one
2-thread job (benchmarks/README.md, issue 21). What ``gptv`` does:
- on a machine already busy when the command starts (``is_busy``), idle threads sleep at once
  (``OMP_WAIT_POLICY=PASSIVE``) unless the environment sets a policy. OpenMP reads it when
  torch loads, so the CLI package decides on import (``prefer_passive_waiting``). It changes no
  result. Beside a 2-thread job it cut the slowdown from 5.6x to 1.4x; fewer threads (1, or the
  cores the load average leaves free) did worse. On an idle machine it cost 1.6x per step
  (waking a sleeping thread at every small operation), so an idle machine keeps spinning waits.
- the thread count stays torch's (one per core, or ``OMP_NUM_THREADS``) unless ``--threads N``.
- on a busy machine (1-minute load average at least half the cores) ``gptv train`` says so in
  a line after its start-up summary: steps are slower and their times noisy (``busy_note``).
"""

from __future__ import annotations

import os

WAIT_POLICY = "OMP_WAIT_POLICY"


def is_busy(cpus: int, load: float | None) -> bool:
    """The 1-minute load average is at least half the ``cpus`` (and at least 1)."""
    return load is not None and load >= max(1.0, cpus / 2)


def prefer_passive_waiting(cpus: int | None = None, load: float | None = None) -> None:
    """On a busy machine idle OpenMP threads sleep instead of spinning, unless the environment says
    otherwise (default: this machine's cores and load). Takes effect only before torch is first
    imported in this process."""
    cpus = cpus or os.cpu_count() or 1
    if is_busy(cpus, load_average() if load is None else load):
        os.environ.setdefault(WAIT_POLICY, "PASSIVE")


def load_average() -> float | None:
    """The 1-minute load average (runnable and waiting processes), or None where there is none."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):  # Windows has no load average
        return None


def busy_note(cpus: int, threads: int, load: float | None) -> str:
    """A line for the user when the load average is at least half of the ``cpus`` (and 1), else ''."""
    if not is_busy(cpus, load):
        return ""
    return (
        f"note: the machine is busy (load average {load:.1f} on {cpus} cores): steps will be slower and "
        f"their times noisy; using {threads} CPU thread{'s' if threads != 1 else ''} (--threads N to choose)"
    )


def machine_note() -> str:
    """``busy_note`` for this machine and this process's torch threads."""
    import torch  # here, not at the top: the CLI sets the OpenMP wait policy before torch loads

    return busy_note(os.cpu_count() or 1, torch.get_num_threads(), load_average())


def apply_threads(requested: int | None) -> None:
    """Set torch's intra-op threads to ``requested``; None leaves torch's choice (and torch unloaded:
    ``gptv --help`` and argument errors answer without it)."""
    if requested is None:
        return
    import torch

    torch.set_num_threads(requested)
