"""Will the model fit? Parameter count and training memory from the config alone, checked before allocating.

Training holds, per parameter, fp32 weights, fp32 gradients and AdamW's two fp32 moments:
16 bytes. That is a lower bound (activations come on top), so a refusal is never wrong; a
model past it would only grow until the machine swaps or the kernel kills it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..common.runtime import resolve_device
from .config import Config, ConfigError
from .heads import HEADS, HeadSpec
from .objectives import OBJECTIVES

TRAIN_BYTES_PER_PARAM = 16  # weights + gradients + Adam m and v, fp32 each


def count_parameters(cfg: Config, vocab_size: int | None = None) -> int:
    """Parameters of the GPT that ``cfg`` describes (``vocab_size`` when the config's is still 0).

    Per block: attention 4C^2 and MLP 8C^2 weights, 9C linear and 4C LayerNorm biases (2C
    LayerNorm weights when bias=false); embeddings (V + T) C; the head's own count
    (``Head.num_parameters``), less the V x C mean weight when the token embedding shares it.
    """
    m, o = cfg.model, cfg.objective
    V, C, T, L = vocab_size or m.vocab_size, m.n_embd, m.block_size, m.n_layer
    block = 12 * C * C + (13 * C if m.bias else 2 * C)
    backbone = V * C + T * C + L * block + (2 * C if m.bias else C)
    spec = HeadSpec(C, V, o.output_bias, OBJECTIVES[o.objective].sigmoid)
    head = HEADS[o.head].num_parameters(spec, o.head_config())
    return backbone + head - (V * C if m.tie_weights else 0)


def available_bytes(device: str) -> int | None:
    """Memory a new allocation can use on ``device`` ('auto' as ``runtime.resolve_device`` picks), or None when unknown.

    CPU: MemAvailable + SwapFree from /proc/meminfo (os.sysconf elsewhere), shared among the
    processes torchrun started on this node. CUDA: the device's free memory."""
    if device == "auto":
        device = resolve_device(device).type  # the one rule for "auto"; MPS memory is not known here
    kind, _, index = device.partition(":")
    if kind == "cuda":
        if not torch.cuda.is_available():
            return None
        return int(torch.cuda.mem_get_info(int(index or os.environ.get("LOCAL_RANK", "0")))[0])
    if kind != "cpu":
        return None
    total = _meminfo_bytes(("MemAvailable", "SwapFree"))
    if total is None:
        try:
            total = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return total // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def _meminfo_bytes(fields: tuple[str, ...]) -> int | None:
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return None
    values = {}
    for line in lines:
        name, _, rest = line.partition(":")
        if name in fields and rest.split():
            values[name] = int(rest.split()[0]) * 1024  # kB
    return sum(values.values()) if "MemAvailable" in values else None


def check_fits(cfg: Config, vocab_size: int, available: int | None = None) -> None:
    """Raise ConfigError when training ``cfg`` cannot fit in the memory of its device."""
    params = count_parameters(cfg, vocab_size)
    need = params * TRAIN_BYTES_PER_PARAM
    device = cfg.train.device
    if device == "auto":
        device = resolve_device(device).type  # the one rule for "auto"; MPS memory is not known here
    have = available_bytes(device) if available is None else available
    if have is not None and need > have:
        count = f"{params / 1e9:,.1f}B" if params >= 1e9 else f"{params / 1e6:,.1f}M"
        raise ConfigError(
            f"the model has {count} parameters: training needs at least {need / 2**30:,.1f} GiB "
            f"(weights, gradients and Adam state), but {device} has {have / 2**30:,.1f} GiB available; "
            "make it smaller (n_layer, n_embd, vocabulary) or use a device with more memory"
        )
