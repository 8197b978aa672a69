"""A full disk is one line that says what is intact, and the work resumes once there is space.

The real cases run on a small tmpfs mounted inside a private mount namespace (``unshare -rm``;
the mount disappears with the process), and are skipped where namespaces are not allowed.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_overrides

from gptvariants.common.atomic import WriteError, preallocate

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _namespaces_work() -> bool:
    if not shutil.which("unshare"):
        return False
    r = subprocess.run(
        [
            "unshare",
            "-rm",
            "sh",
            "-c",
            "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null || mount -t tmpfs -o size=64k tmpfs /tmp",
        ],
        capture_output=True,
    )
    return r.returncode == 0


needs_tmpfs = pytest.mark.skipif(not _namespaces_work(), reason="cannot mount a tmpfs in a private namespace here")


def _in_small_disk(tmp_path: Path, script: str) -> subprocess.CompletedProcess:
    """Run bash ``script`` with $DISK a tmpfs private to it; $PY runs this checkout's Python."""
    disk = tmp_path / "disk"
    disk.mkdir()
    env = {**os.environ, "DISK": str(disk), "PY": sys.executable, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        ["unshare", "-rm", "bash", "-c", script], env=env, capture_output=True, text=True, timeout=240
    )


@needs_tmpfs
def test_targets_on_a_full_disk_is_one_line_then_resumes_identically(tiny_data, tmp_path):
    from gptvariants.targets import build_targets

    build_targets(tiny_data, "oracle", tmp_path / "ref", k=8, progress=False)
    r = _in_small_disk(
        tmp_path,
        f"""
        mount -t tmpfs -o size=400k tmpfs "$DISK" && cp -r {tiny_data} "$DISK/data"
        "$PY" -m gptvariants targets --data "$DISK/data" --teacher oracle --k 8 --out "$DISK/data/targets/t"
        echo "rc=$?"
        mount -o remount,size=4m "$DISK"
        "$PY" -m gptvariants targets --data "$DISK/data" --teacher oracle --k 8 \
            --out "$DISK/data/targets/t" > /dev/null
        echo "rc=$?"
        cp "$DISK"/data/targets/t/*.bin {tmp_path}/
    """,
    )
    assert "Bus error" not in r.stderr and r.stdout.split() == ["rc=2", "rc=0"], r.stdout + r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("gptv targets: error")]
    assert len(errors) == 1 and "(No space left on device)" in errors[0] and " free on " in errors[0], r.stderr
    assert errors[0].endswith("the chunks built so far are kept: rerun to resume")
    for split in ("train", "val"):
        assert (tmp_path / f"{split}.bin").read_bytes() == (tmp_path / "ref" / f"{split}.bin").read_bytes()


@needs_tmpfs
def test_training_on_a_full_disk_keeps_the_previous_checkpoint(tiny_data, tmp_path):
    o = tiny_overrides(tiny_data, "RUN", eval_interval=5, keep_checkpoints=1)
    args = " ".join(f"--{k}={v}" for k, v in o.items() if k != "out_dir")
    # one checkpoint with room to spare, then the disk shrinks to what is used plus half a checkpoint
    r = _in_small_disk(
        tmp_path,
        f"""
        mount -t tmpfs -o size=4m tmpfs "$DISK"
        "$PY" -m gptvariants train {args} --max_iters=5 --out_dir="$DISK/run" > /dev/null
        used=$(df -k --output=used "$DISK" | tail -1); ckpt=$(du -sk "$DISK/run/ckpt-00000005" | cut -f1)
        mount -o remount,size=$((used + ckpt / 2))k "$DISK"
        "$PY" -m gptvariants train {args} --max_iters=30 --out_dir="$DISK/run" --resume
        echo "rc=$?"
        "$PY" -c "from gptvariants.store.checkpoint import latest_checkpoint as c;print('loadable',c('$DISK/run').name)"
        ls -a "$DISK/run"
    """,
    )
    errors = [line for line in r.stderr.splitlines() if line.startswith("gptv train: error")]
    assert "rc=2" in r.stdout and len(errors) == 1, r.stdout + r.stderr
    assert "could not write the checkpoint of step 10" in errors[0] and " free on " in errors[0]
    assert errors[0].endswith("the previous checkpoint (step 5) is intact"), errors[0]
    assert "loadable ckpt-00000005" in r.stdout
    assert not [n for n in r.stdout.split() if n.startswith(".ckpt-")], "temporary folder left behind"


def test_preallocate_past_the_file_size_limit_is_one_line(tmp_path):
    script = (
        f"import resource, sys; sys.path.insert(0, {SRC!r})\n"
        "from gptvariants.common.atomic import WriteError, preallocate\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))\n"
        f"try:\n    preallocate({str(tmp_path / 'big.bin')!r}, 1 << 20, fresh=True, what='the sets')\n"
        "except WriteError as e:\n    print(e)\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.stdout.startswith("could not write the sets to ") and "File too large" in r.stdout, r.stdout + r.stderr
    assert "file size limit (ulimit -f) 64.0 KiB" in r.stdout and len(r.stdout.strip().splitlines()) == 1
    assert not (tmp_path / "big.bin").exists(), "a fresh file that could not be allocated is removed"


def test_preallocate_keeps_existing_bytes(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    preallocate(path, 4096, fresh=False)
    data = path.read_bytes()
    assert data[:3] == b"abc" and len(data) == 4096 and data[3:] == bytes(4093)
    preallocate(path, 100, fresh=True)
    assert path.read_bytes() == bytes(100)
    with pytest.raises(WriteError, match="could not write f.bin"):
        preallocate(tmp_path / "missing" / "f.bin", 10, fresh=True)
