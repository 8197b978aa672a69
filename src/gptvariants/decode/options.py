"""The names decoding options accept, without torch (``gptv sample --help`` loads none)."""

from __future__ import annotations

# how a sigmoid head's tokens are drawn: sigmoid/sum (normalize), or among those with sigmoid > tau (set)
SIG_MODES = ("normalize", "set")
