"""Defaults the evaluation commands show, without torch (``gptv experiment --help`` loads none)."""

from __future__ import annotations

DEFAULT_BUDGET = "400"  # steps per variant of `gptv experiment`
