"""Progress for long passes: a tqdm bar in a terminal; in a redirected log a plain line at most every
``every`` seconds and at the end (never carriage returns); nothing when disabled."""

from __future__ import annotations

import sys
import time

PROGRESS_SECONDS = 30.0


class Progress:
    """``update(n)`` after each piece of work of ``total``; ``close()`` at the end."""

    def __init__(
        self,
        enabled: bool,
        total: int,
        initial: int = 0,
        desc: str = "",
        unit: str = "chunk",
        every: float = PROGRESS_SECONDS,
    ) -> None:
        self.total, self.done, self.desc, self.unit, self.every, self.bar = total, initial, desc, unit, every, None
        self.enabled, self.start, self.last = enabled, time.perf_counter(), time.perf_counter()
        if enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, leave=False)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and (time.perf_counter() - self.last >= self.every or self.done >= self.total):
            self.last = time.perf_counter()
            print(
                f"{self.desc}: {self.done:,}/{self.total:,} {self.unit}s "
                f"({100 * self.done / max(self.total, 1):.0f}%), "
                f"{self.last - self.start:.0f} s",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
