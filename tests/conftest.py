"""Shared fixtures: a tiny synthetic dataset (prepared once per session) and tiny-model overrides."""

from pathlib import Path

import pytest

from gptvariants.data.prepare import prepare

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# a model that trains in milliseconds per step on one CPU core
TINY_SHAPE = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=8, progress="lines", tensorboard=False)
TINY = dict(**TINY_SHAPE, eval_iters=4, log_interval=5, warmup_iters=5, device="cpu")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "synthetic-tiny"
    prepare("synthetic:tiny", out)
    return out


def tiny_overrides(data: Path, out: Path, **kw) -> dict:
    return {**TINY, "data": str(data), "out_dir": str(out), **kw}


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tests run tiny models whose ops are too small to split across threads; on a 2-core machine
    shared with other jobs, two spinning OpenMP threads made them up to 20x slower than one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
