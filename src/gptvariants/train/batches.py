"""Training batches: global batches of (x, y, sets) windows, reproducible from (seed, step).

Every optimizer step s draws its global batch from a generator seeded by (seed, s), so a run
resumes exactly from any checkpoint without carrying RNG state, and a DDP run over W ranks
with G accumulation steps sees the same global batch as one process with G steps: rank r
takes micro-batches r*G/W .. (r+1)*G/W - 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..common.errors import InputError
from ..common.runtime import Runtime, step_seed
from ..core.config import Config
from ..data.dataset import TokenDataset
from ..targets import build_online_teacher, readout_draws


class Batches:
    """Global batches of (x, y, sets) windows, reproducible from (seed, step)."""

    def __init__(self, data: TokenDataset, cfg: Config, rt: Runtime, sets_dir: Path | None) -> None:
        self.data, self.rt = data, rt
        self.B, self.T = cfg.train.batch_size, cfg.model.block_size
        self.G = cfg.train.gradient_accumulation_steps
        if self.G % rt.world:
            raise InputError(
                f"gradient_accumulation_steps ({self.G}) must be a multiple of the number of processes ({rt.world})"
            )
        self.seed = cfg.train.seed
        self.sets = {s: data.open_sets(sets_dir, s) for s in ("train", "val")} if sets_dir else {}
        self.set_draws = 1  # how the sets were drawn: m of the sigmoid readout (objectives.SigmoidBCE)
        if sets_dir:
            meta = json.loads((sets_dir / "meta.json").read_text(encoding="utf-8"))
            self.set_draws = readout_draws(meta["rules"].get("select", "top"), int(meta["k"]))
        self.teacher = None
        if cfg.objective.teacher:
            if sets_dir:
                raise InputError("give either targets (cached sets) or teacher (online sets), not both")

            self.teacher = build_online_teacher(cfg.objective.teacher, data, rt.device)
            self.set_draws = self.teacher.set_draws
        self.n = {split: len(data.split(split)) for split in ("train", "val")}
        for split, n in self.n.items():
            if self.T >= n:
                raise InputError(
                    f"block_size {self.T} is larger than the {split} split ({n} tokens); "
                    "use a smaller block_size or more data"
                )

    def _offsets(self, split: str, count: int, step: int, stream: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(step_seed(self.seed, step, 0, stream))
        return torch.randint(self.n[split] - self.T, (count,), generator=g)

    def micro_batches(self, step: int):
        """This rank's micro-batches of global training batch ``step``: a list of (x, y, sets) on the device."""
        offsets = self._offsets("train", self.G * self.B, step, 0).view(self.G, self.B)
        per_rank = self.G // self.rt.world
        return [self._load("train", o) for o in offsets[self.rt.rank * per_rank : (self.rt.rank + 1) * per_rank]]

    def eval_batch(self, split: str, i: int):
        """Evaluation batch ``i`` of a split: the same windows at every evaluation and for every variant."""
        return self._load(split, self._offsets(split, self.B, 0, 1000 + i))

    def _load(self, split: str, offsets: torch.Tensor):
        x, y, s = self.data.windows(split, offsets.numpy(), self.T, self.sets.get(split))
        dev = self.rt.device
        nb = dev.type == "cuda"
        x, y = x.to(dev, non_blocking=nb), y.to(dev, non_blocking=nb)
        if self.teacher is not None:
            return x, y, self.teacher(x)
        return x, y, (s.to(dev, non_blocking=nb) if s is not None else None)
