import sys

import pytest

from gptvariants.common import allocator


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
