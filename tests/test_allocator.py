import sys

import pytest
from conftest import tiny_overrides

from gptvariants.apps.cli.main import main
from gptvariants.common import allocator
from gptvariants.core.config import load_config
from gptvariants.train.loop import train


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_keep_freed_memory_applies_once_and_can_be_disabled(monkeypatch):
    monkeypatch.setattr(allocator, "_done", False)
    monkeypatch.setenv("GPTV_MALLOC_TUNING", "0")
    assert allocator.keep_freed_memory() is False and allocator._done is False
    monkeypatch.delenv("GPTV_MALLOC_TUNING")
    assert allocator.keep_freed_memory() is True and allocator._done is True
    assert allocator.keep_freed_memory() is True  # idempotent


def test_no_op_off_linux(monkeypatch):
    monkeypatch.setattr(allocator, "_done", False)
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.keep_freed_memory() is False


class _FakeLibc:
    """Stands in for glibc: records each mallopt call instead of changing the process."""

    def __init__(self, calls: list):
        def mallopt(param, value):
            calls.append((param, value))
            return 1

        self.mallopt = mallopt  # a plain function, so that argtypes/restype can be set on it


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_only_the_cli_entry_tunes_the_allocator(monkeypatch, tiny_data, tmp_path, capsys):
    """train() as a library call leaves the process's allocator alone; `gptv` tunes it at its entry."""
    calls: list = []
    monkeypatch.setattr(allocator, "_done", False)
    monkeypatch.delenv("GPTV_MALLOC_TUNING", raising=False)
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name: _FakeLibc(calls))
    cfg = load_config("baseline", overrides=tiny_overrides(tiny_data, tmp_path / "run", max_iters=2, eval_interval=2))
    train(cfg)
    assert calls == [] and allocator._done is False
    assert main(["variants"]) == 0
    assert len(calls) == 2 and allocator._done is True
