"""Checkpoints are atomic, checksummed, safe to load; a failed save or a damaged file loses nothing."""

import errno
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors import SafetensorError

from gptvariants.common.atomic import WriteError, clean_temporaries
from gptvariants.common.runtime import DeviceError
from gptvariants.core.config import load_config
from gptvariants.core.model import GPT
from gptvariants.store import checkpoint as ck


def _model(seed=0):
    torch.manual_seed(seed)
    cfg = load_config(
        "bayes-sig", overrides={"vocab_size": "17", "n_layer": "1", "n_head": "1", "n_embd": "8", "block_size": "8"}
    )
    return GPT(cfg.model, cfg.objective), cfg


def _save(run, step, seed=0, **kw):
    model, cfg = _model(seed)
    return ck.save_checkpoint(run, model, {"step": step, "config": cfg.to_dict()}, **kw), model


def _flip(path, offset_from_end=64, n=16):
    data = bytearray(path.read_bytes())
    for i in range(len(data) - offset_from_end, len(data) - offset_from_end + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


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
    manifest = ck.read_manifest(path)
    assert set(manifest["files"]) == {"model.safetensors", "state.pt"} and manifest["step"] == 3


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EDQUOT, "Disk quota exceeded"),
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 452864 vs 452756"),
        SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })"),
        ValueError("something numpy-ish"),
    ],
)
def test_any_write_failure_is_one_line_and_keeps_previous(tmp_path, monkeypatch, error):
    _save(tmp_path, 1)

    def fail(*a, **kw):
        raise error

    monkeypatch.setattr(ck.torch, "save", fail)
    with pytest.raises(WriteError) as info:
        _save(tmp_path, 2)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("could not write the checkpoint of step 2 to ")
    assert " free on " in msg and msg.endswith("the previous checkpoint (step 1) is intact"), msg
    if isinstance(error, RuntimeError):
        assert "cut short" in msg
    assert json.loads((tmp_path / ck.POINTER).read_text())["step"] == 1
    assert ck.load_state(ck.latest_checkpoint(tmp_path))["step"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left behind"


RLIMIT_SCRIPT = """
import resource, sys, torch
sys.path.insert(0, {tests!r})
from test_checkpoint import _save
from gptvariants.common.atomic import WriteError
_save({run!r}, 1)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
big = {{"step": 2, "blob": torch.zeros(100_000)}}
try:
    from gptvariants.store import checkpoint as ck
    model, cfg = __import__("test_checkpoint")._model()
    ck.save_checkpoint({run!r}, model, {{**big, "config": cfg.to_dict()}})
except WriteError as e:
    print("ERR", e)
"""


def test_file_size_limit_efbig_is_one_line(tmp_path):
    """A real short write: ``ulimit -f`` makes the kernel refuse past 4 KiB (EFBIG or torch's 'unexpected pos')."""
    script = RLIMIT_SCRIPT.format(tests=str(__import__("pathlib").Path(__file__).parent), run=str(tmp_path / "run"))
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    lines = [line for line in r.stdout.splitlines() if line.startswith("ERR ")]
    assert r.returncode == 0 and len(lines) == 1, r.stdout + r.stderr
    assert "file size limit (ulimit -f) 4.0 KiB" in lines[0] and "previous checkpoint (step 1) is intact" in lines[0]
    assert ck.load_state(ck.latest_checkpoint(tmp_path / "run"))["step"] == 1


def test_keeps_last_n_and_best(tmp_path):
    for step, val in zip(range(1, 6), (3.0, 2.0, 2.5, 2.6, None)):
        _save(tmp_path, step, seed=step, keep=2, val_ce=val)
    assert [p.name for _, p in ck.checkpoints(tmp_path)] == ["ckpt-00000002", "ckpt-00000004", "ckpt-00000005"]
    assert ck.best_checkpoint(tmp_path).name == "ckpt-00000002"
    best, _ = ck.load_run(tmp_path, which="best")
    expect, _ = _model(seed=2)
    assert torch.equal(best.head.weight_mu, expect.head.weight_mu)
    _save(tmp_path, 6, seed=6, keep=1, val_ce=1.0)  # a new best replaces the old one
    assert [p.name for _, p in ck.checkpoints(tmp_path)] == ["ckpt-00000006"]


@pytest.mark.parametrize(
    "file,how,problem",
    [
        ("model.safetensors", "flip", "model.safetensors does not match its checksum"),
        ("state.pt", "flip", "state.pt does not match its checksum"),
        ("state.pt", "truncate", "state.pt has"),
        ("manifest.json", "flip", "manifest.json is damaged"),
        ("model.safetensors", "delete", "model.safetensors is missing"),
    ],
)
def test_damaged_latest_falls_back_with_warning(tmp_path, capsys, file, how, problem):
    _save(tmp_path, 1, seed=1)
    latest, _ = _save(tmp_path, 2, seed=2)
    target = latest / file
    if how == "flip":
        _flip(target, offset_from_end=40)
    elif how == "truncate":
        target.write_bytes(target.read_bytes()[:-100])
    else:
        target.unlink()
    model, _ = ck.load_run(tmp_path)
    expect, _ = _model(seed=1)
    assert torch.equal(model.head.weight_mu, expect.head.weight_mu), "did not fall back to step 1"
    err = capsys.readouterr().err
    assert (
        "warning: checkpoint" in err
        and "ckpt-00000002 is unusable" in err
        and problem in err
        and "using ckpt-00000001" in err
    )


def test_no_usable_checkpoint_names_every_problem(tmp_path):
    p1, _ = _save(tmp_path, 1)
    p2, _ = _save(tmp_path, 2)
    _flip(p1 / "model.safetensors")
    (p2 / "state.pt").unlink()
    with pytest.raises(
        ck.CheckpointError,
        match=r"no usable checkpoint .*ckpt-00000002: incomplete: state.pt is missing; "
        r"ckpt-00000001: model.safetensors does not match",
    ):
        ck.latest_checkpoint(tmp_path)


@pytest.mark.parametrize("pointer", ["[1, 2]", '{"dir": null}', '{"dir": "../../etc"}', '{"dir": "ckpt-000', ""])
def test_damaged_pointer_uses_newest_folder(tmp_path, capsys, pointer):
    _save(tmp_path, 1)
    _save(tmp_path, 2)
    (tmp_path / ck.POINTER).write_text(pointer)
    assert ck.latest_checkpoint(tmp_path).name == "ckpt-00000002"
    assert "checkpoint.json" in capsys.readouterr().err


def test_missing_and_half_written(tmp_path):
    with pytest.raises(ck.CheckpointError, match="does not exist"):
        ck.latest_checkpoint(tmp_path / "nope")
    with pytest.raises(ck.CheckpointError, match="holds no checkpoint"):
        ck.latest_checkpoint(tmp_path)
    path, _ = _save(tmp_path, 1)
    (path / "state.pt").unlink()
    with pytest.raises(ck.CheckpointError, match="ckpt-00000001: incomplete: state.pt is missing"):
        ck.latest_checkpoint(tmp_path)


def test_state_file_cannot_execute_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path, _ = _save(tmp_path, 1)
    torch.save({"step": 1, "evil": Evil()}, path / "state.pt")
    with pytest.raises(ck.CheckpointError, match="cannot read") as info:
        ck.load_state(path)
    assert "weights_only=False" not in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "wording",
    [
        # torch 2.13: the advice first, then the refused global
        "Weights only load failed. In PyTorch 2.6, we changed the default value of the `weights_only` argument in "
        "`torch.load` from `False` to `True`. Re-running `torch.load` with `weights_only` set to `False` will likely "
        "succeed, but it can result in arbitrary code execution.\n\n\nTrying to load unsupported GLOBAL "
        "posix.system whose module posix is blocked.\n\nCheck the documentation of torch.load",
        # older torch
        "Weights only load failed. Re-running `torch.load` with `weights_only` set to `False` will likely succeed\n"
        "Please file an issue: WeightsUnpickler error: Unsupported global: GLOBAL posix.system",
    ],
)
def test_the_pickle_refusal_says_what_gptvariants_does_whatever_torchs_wording(tmp_path, monkeypatch, wording):
    import pickle

    path, _ = _save(tmp_path, 1)

    def refuse(*a, **k):
        raise pickle.UnpicklingError(wording)

    monkeypatch.setattr(ck.torch, "load", refuse)
    with pytest.raises(ck.CheckpointError) as info:
        ck.load_state(path)
    msg = str(info.value)
    assert "posix.system" in msg and "weights_only=True" in msg and "never runs code" in msg
    assert "set to `False`" not in msg and "will likely succeed" not in msg and "\n" not in msg


def test_a_malicious_state_file_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path, _ = _save(tmp_path, 1)
    torch.save({"step": 1, "evil": Evil()}, path / "state.pt")
    with pytest.raises(ck.CheckpointError, match="never runs code") as info:
        ck.load_state(path)
    assert "system" in str(info.value) and "set to `False`" not in str(info.value) and not marker.exists()


def test_leftover_temporaries_are_cleaned_but_nothing_else(tmp_path):
    _save(tmp_path, 1)
    (tmp_path / ".ckpt-00000002.k3j2.tmp").mkdir()
    (tmp_path / ".ckpt-00000002.k3j2.tmp" / "model.safetensors").write_bytes(b"x" * 100)
    (tmp_path / ".checkpoint.json.abc.tmp").write_text("{")
    (tmp_path / "train.lock").write_text("{}")
    removed = ck.clean_leftovers(tmp_path)
    assert removed == [".checkpoint.json.abc.tmp", ".ckpt-00000002.k3j2.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.json", "ckpt-00000001", "train.lock"]
    assert clean_temporaries(tmp_path / "missing", ".ckpt-") == []


def test_load_run_on_a_missing_device_is_one_line(tmp_path):
    _save(tmp_path, 1)
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeviceError, match="no CUDA") as info:
        ck.load_run(tmp_path, device="cuda")
    assert "\n" not in str(info.value)


def test_checkpoints_and_written_files_follow_the_umask(tmp_path):
    """Collaborators on a shared cluster read what a run writes: no 0600 files or 0700 folders."""
    import os

    from gptvariants.common.atomic import atomic_write

    old = os.umask(0o022)
    try:
        ckpt, _ = _save(tmp_path / "run", step=1)
        atomic_write(tmp_path / "run" / "notes.json", "{}")
    finally:
        os.umask(old)
    assert ckpt.stat().st_mode & 0o777 == 0o755
    for f in (*ckpt.iterdir(), tmp_path / "run" / "checkpoint.json", tmp_path / "run" / "notes.json"):
        assert f.stat().st_mode & 0o777 == 0o644, f


# ----------------------------------------------------------------------------- the run folder


def test_run_folder_reads_its_step_without_loading_a_checkpoint(tmp_path, monkeypatch):
    from gptvariants.store.run import RunFolder

    run = tmp_path / "run"
    assert not RunFolder.is_run(run) and RunFolder(run).step is None
    _save(run, 3)
    _save(run, 7)
    monkeypatch.setattr(ck.torch, "load", lambda *a, **k: pytest.fail("state.pt was loaded"))
    folder = RunFolder(run)
    assert RunFolder.is_run(run) and folder.step == 7 and folder.checkpoint_step() == 7
    assert [s for s, _ in folder.checkpoints()] == [3, 7]
    assert [f.path for f in RunFolder.find(tmp_path)] == [run]


def test_run_folder_step_of_a_damaged_newest_checkpoint_is_the_one_loaded(tmp_path):
    from gptvariants.store.run import RunFolder

    run = tmp_path / "run"
    _save(run, 3)
    _flip(_save(run, 7)[0] / "model.safetensors")
    assert RunFolder(run).step == 7  # what the pointer says
    assert RunFolder(run).checkpoint_step() == 3  # what eval and a resume actually use


def test_run_folder_metrics_temperature_laplace_and_config(tmp_path, capsys):
    from gptvariants.store.run import RunFolder

    run = tmp_path / "run"
    model, cfg = _model()
    ck.save_checkpoint(run, model, {"step": 2, "config": cfg.to_dict()})
    cfg.save(run / "config.json")
    folder = RunFolder(run)
    assert folder.records() == [] and folder.temperature("default") == 1.0 and not folder.has_laplace()
    lines = [{"kind": "train", "step": 1, "ms_per_step": 5.0}, {"kind": "eval", "step": 2, "val_ce": 1.5}]
    folder.metrics_file.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"kind": "tra')
    assert folder.records("eval") == [lines[1]] and folder.ms_per_step() == [5.0]
    assert "dropped a half-written last line" in capsys.readouterr().err  # the one reader's rule
    folder.calibration_file.write_text(json.dumps({"temperature": {"default": 1.25}}))
    assert folder.temperature("default") == 1.25 and folder.temperature("laplace") == 1.0
    folder.calibration_file.write_text("[1]")
    with pytest.raises(ValueError, match="calibration.json is unreadable"):
        folder.temperature("default")
    for p in folder.laplace_files:
        p.write_text("{}")
    assert folder.has_laplace()
    assert folder.config().objective.variant == cfg.objective.variant


def test_auto_device_has_one_rule(monkeypatch):
    from gptvariants.common.runtime import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")  # train, eval, calibrate, targets and the API alike
