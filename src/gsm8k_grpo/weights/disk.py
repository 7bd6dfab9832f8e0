"""Disk transport: write the weights as an HF safetensors dir, let the engine load it, delete it.

One shard per bucket (``model-0000i-of-0000N.safetensors`` + ``model.safetensors.index.json``),
plus ``config.json`` / ``generation_config.json`` copied from the base model dir. The dir goes
to /dev/shm when it has room for twice the bytes (last push's size, else the base model's
safetensors), else to ``out_dir``; a shard that would not fit in /dev/shm moves the dir there.
Works with any engine that has ``load_weights_from_disk`` (SGLang server or in-process HF).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import save_file

from gsm8k_grpo.rollout.base import Engine, EngineError
from gsm8k_grpo.weights.base import PushStats, Transport, TransportError, buckets

SHM = Path("/dev/shm")
COPIED_FILES = ("config.json", "generation_config.json")


def _free_bytes(path: Path) -> int:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0


def _cpu_unshared(bucket: list[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, and no two tensors on one storage (safetensors refuses tied weights)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in bucket:
        t = t.detach()
        ptr = t.untyped_storage().data_ptr() if t.numel() else -1
        if ptr in seen:
            t = t.clone()
        seen.add(ptr)
        out[name] = t.to("cpu").contiguous()
    return out


class DiskTransport(Transport):
    name = "disk"

    def __init__(self, engine: Engine, base_model_dir: str | Path, out_dir: Path | None, bucket_mb: int,
                 *, use_shm: bool = True):
        self.engine = engine
        self.base_model_dir = Path(base_model_dir)
        self.out_dir = Path(out_dir) if out_dir is not None else Path(tempfile.gettempdir())
        self.bucket_bytes = bucket_mb << 20
        self.use_shm = use_shm
        if not (self.base_model_dir / "config.json").is_file():
            raise TransportError(f"disk transport: {self.base_model_dir} has no config.json (need a local model dir)")
        self._last = sum(p.stat().st_size for p in self.base_model_dir.glob("*.safetensors"))

    def _root(self, nbytes: int) -> Path:
        if self.use_shm and SHM.is_dir() and _free_bytes(SHM) >= 2 * nbytes:
            return SHM
        return self._out()

    def _out(self) -> Path:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        return self.out_dir

    def push(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> PushStats:
        t0 = time.perf_counter()
        d = Path(tempfile.mkdtemp(prefix=f"gsm8k_grpo_v{version}_", dir=self._root(self._last)))
        try:
            weight_map: dict[str, str] = {}
            shards: list[Path] = []
            total = 0
            for bucket in buckets(named_tensors, self.bucket_bytes):
                tensors = _cpu_unshared(bucket)
                nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
                if d.parent == SHM and _free_bytes(SHM) < 2 * nbytes:
                    d = Path(shutil.move(str(d), str(self._out() / d.name)))
                    shards = [d / p.name for p in shards]
                shard = d / f"shard-{len(shards):05d}.safetensors"
                save_file(tensors, str(shard), metadata={"format": "pt"})
                shards.append(shard)
                weight_map.update(dict.fromkeys(tensors, len(shards) - 1))
                total += nbytes
            if not shards:
                raise TransportError("disk transport: no tensors to push")
            names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
            for shard, new in zip(shards, names):
                shard.rename(d / new)
            index = {"metadata": {"total_size": total}, "weight_map": {k: names[i] for k, i in weight_map.items()}}
            (d / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
            for f in COPIED_FILES:
                if (self.base_model_dir / f).is_file():
                    shutil.copy2(self.base_model_dir / f, d / f)
            try:
                self.engine.load_weights_from_disk(str(d), version)
            except EngineError as e:
                raise TransportError(f"disk weight update to version {version} failed: {e}") from e
            self._last = total
            return PushStats(seconds=time.perf_counter() - t0, bytes=total, buckets=len(shards))
        finally:
            shutil.rmtree(d, ignore_errors=True)
