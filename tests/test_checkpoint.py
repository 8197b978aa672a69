"""Checkpoints are atomic, safe to load, and a failed save leaves the previous one intact."""

import errno
import json

import pytest
import torch

from gptvariants import checkpoint as ck
from gptvariants.config import load_config
from gptvariants.model import GPT


def _model(seed=0):
    torch.manual_seed(seed)
    cfg = load_config("bayes-sig", overrides={"vocab_size": "17", "n_layer": "1", "n_head": "1", "n_embd": "8", "block_size": "8"})
    return GPT(cfg.model, cfg.objective), cfg


def test_roundtrip_tied_weights_and_state(tmp_path):
    model, cfg = _model()
    opt = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 4, dtype=torch.long)).loss.backward()
    opt.step()
    ck.save_checkpoint(tmp_path, model, {"step": 3, "config": cfg.to_dict(), "optimizer": opt.state_dict()})
    other, _ = _model(seed=1)
    path = ck.latest_checkpoint(tmp_path)
    ck.load_weights(path, other)
    for (n, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), n
    assert other.transformer.wte.weight is other.head.weight_mu  # tying survives loading
    state = ck.load_state(path)
    assert state["step"] == 3 and state["optimizer"]["state"]


def test_disk_full_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model, cfg = _model()
    ck.save_checkpoint(tmp_path, model, {"step": 1, "config": cfg.to_dict()})

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck.torch, "save", full)
    with pytest.raises(OSError, match="No space"):
        ck.save_checkpoint(tmp_path, model, {"step": 2, "config": cfg.to_dict()})
    assert json.loads((tmp_path / ck.POINTER).read_text())["step"] == 1
    assert ck.load_state(ck.latest_checkpoint(tmp_path))["step"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_keeps_only_latest(tmp_path):
    model, cfg = _model()
    for step in (1, 2, 3):
        ck.save_checkpoint(tmp_path, model, {"step": step, "config": cfg.to_dict()})
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == ["ckpt-00000003"]


def test_missing_and_half_written(tmp_path):
    with pytest.raises(ck.CheckpointError, match="does not exist"):
        ck.latest_checkpoint(tmp_path / "nope")
    with pytest.raises(ck.CheckpointError, match="holds no checkpoint"):
        ck.latest_checkpoint(tmp_path)
    model, cfg = _model()
    path = ck.save_checkpoint(tmp_path, model, {"step": 1, "config": cfg.to_dict()})
    (path / "state.pt").unlink()
    with pytest.raises(ck.CheckpointError, match="incomplete: state.pt is missing"):
        ck.latest_checkpoint(tmp_path)


def test_state_file_cannot_execute_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    model, cfg = _model()
    path = ck.save_checkpoint(tmp_path, model, {"step": 1, "config": cfg.to_dict()})
    torch.save({"step": 1, "evil": Evil()}, path / "state.pt")
    with pytest.raises(ck.CheckpointError, match="cannot read"):
        ck.load_state(path)
