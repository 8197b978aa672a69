"""The gptv command line: one module per command group; its parser in parsers/ (no torch); main.py builds it."""

from ...common.threads import prefer_passive_waiting

prefer_passive_waiting()  # first, before any command module loads torch (and with it OpenMP)
