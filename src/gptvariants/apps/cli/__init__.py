"""The gptv command line: one module per command group; main.py builds the parser."""

from ...common.threads import prefer_passive_waiting

prefer_passive_waiting()  # first, before any command module loads torch (and with it OpenMP)
