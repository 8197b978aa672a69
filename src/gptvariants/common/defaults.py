"""Defaults that the command line shows and lower layers use, importable without numpy or torch
(``gptv --help`` loads no more than the standard library)."""

from __future__ import annotations

# block bootstrap of every figure's interval (intervals.py)
RESAMPLES = 200  # bootstrap resamples by default
BLOCK = 64  # tokens per bootstrap block by default (about one sliding window of the experiment's models)
