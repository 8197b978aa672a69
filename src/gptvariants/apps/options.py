"""Names the front ends' options accept, without torch (``gptv export --help`` loads none)."""

from __future__ import annotations

FORMATS = ("hf",)  # `gptv export --format`
