"""CPU threads of a ``gptv`` process: how many, and how idle ones wait.

Two habits of OpenMP thrash a CPU shared with other jobs (benchmarks/README.md, issue 21):
torch starts one thread per core, and an idle thread spins for a while before it sleeps.
Beside one other 2-thread job on 2 cores, a step then waits at every operation for a thread
that is descheduled while its partner spins (13x slower in the issue's report).

The policy ``gptv`` applies (``choose_threads``), unless the user decides:
- ``--threads N``: N threads. ``OMP_NUM_THREADS`` set in the environment: torch's own choice.
- otherwise the cores that the 1-minute load average leaves free, rounded, between 1 and the
  cores torch would use: all of them on a quiet machine (the same as torch's default, so
  results there do not change), fewer beside other jobs, with a one-line note saying so.
- idle threads sleep at once (``OMP_WAIT_POLICY=PASSIVE``) unless the environment sets a
  policy; it must be set before torch loads OpenMP, so the CLI package sets it on import
  (``prefer_passive_waiting``).
The thread count can change float rounding (reductions split differently), so runs that must
agree to the last digit should pass the same ``--threads``.
"""

from __future__ import annotations

import os

WAIT_POLICY = "OMP_WAIT_POLICY"
BUSY_NOTE_LOAD = 0.5  # a load at least this far above nothing, on top of us, is worth a note


def prefer_passive_waiting() -> None:
    """Idle OpenMP threads sleep instead of spinning, unless the environment says otherwise.
    Takes effect only before torch is first imported in this process."""
    os.environ.setdefault(WAIT_POLICY, "PASSIVE")


def load_average() -> float | None:
    """The 1-minute load average (runnable and waiting processes), or None where there is none."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):  # Windows has no load average
        return None


def choose_threads(requested: int | None, cores: int, load: float | None, env: str | None) -> tuple[int | None, str]:
    """(threads to set or None to leave torch's choice, note for the user or '').

    ``cores``: torch's default thread count; ``load``: the 1-minute load average before this
    process started working; ``env``: OMP_NUM_THREADS as the environment gives it.
    """
    if requested is not None:
        return requested, ""
    if env:
        return None, ""
    if load is None or load < BUSY_NOTE_LOAD:
        return None, ""
    free = max(1, min(cores, int(cores - load + 0.5)))  # rounded half up
    if free == cores:
        return None, ""
    return free, (
        f"the machine is busy (load average {load:.1f} on {cores} cores): using {free} thread"
        f"{'s' if free > 1 else ''} instead of {cores}; pass --threads N to choose"
    )


def apply_threads(requested: int | None) -> str:
    """Set torch's intra-op threads by ``choose_threads``; returns its note ('' when there is none)."""
    import torch  # here, not at the top: the CLI sets the OpenMP wait policy before torch loads

    threads, note = choose_threads(
        requested, torch.get_num_threads(), load_average(), os.environ.get("OMP_NUM_THREADS")
    )
    if threads is not None:
        torch.set_num_threads(threads)
    return note
