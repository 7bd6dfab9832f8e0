"""CUDA IPC transport: hand the server CUDA-IPC handles of flattened buckets (same GPU only).

Per bucket, as SGLang 0.5.17/0.5.23 expect for ``load_format: "flattened_bucket"``
(``TpModelWorker._deserialize_own_rank`` -> ``WeightUpdater._update_weights_from_flattened_bucket``):
the serialized object is a dict ``{"flattened_tensor": uint8 CUDA tensor, "metadata":
list[FlattenedTensorMetadata]}`` built by SGLang's ``FlattenedTensorBucket``, pickled with
``MultiprocessingSerializer.serialize(obj, output_str=True)`` (base64) after
``monkey_patch_torch_reductions()`` (IPC handles carry the GPU UUID, not the index). The
request sends one such string per server TP rank in ``serialized_named_tensors``. The bucket
stays alive until the reply (the server copies out of our memory), then ``ipc_collect``
releases the shared blocks. SGLang is imported lazily, only here.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import torch

from gsm8k_grpo.rollout.base import Engine, EngineError
from gsm8k_grpo.rollout.client import SGLangClient
from gsm8k_grpo.weights.base import PushStats, Transport, TransportError, buckets


def _sglang_ipc():
    try:
        from sglang.srt.utils import MultiprocessingSerializer
        from sglang.srt.utils.patch_torch import monkey_patch_torch_reductions
        from sglang.srt.weight_sync.tensor_bucket import FlattenedTensorBucket
    except ImportError as e:
        raise TransportError(f"weights.transport=ipc needs SGLang importable in the trainer ({e}); use disk") from e
    monkey_patch_torch_reductions()
    return MultiprocessingSerializer, FlattenedTensorBucket


class IPCTransport(Transport):
    name = "ipc"

    def __init__(self, client: SGLangClient, bucket_mb: int, *, tp_size: int = 1, engine: Engine | None = None):
        self.client = client
        self.bucket_bytes = bucket_mb << 20
        self.tp_size = tp_size
        self.engine = engine  # its weight_version follows successful pushes

    def push(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> PushStats:
        serializer, bucket_cls = _sglang_ipc()
        t0 = time.perf_counter()
        total = n = 0
        try:
            with self.client.weight_update_session():
                for bucket in buckets(named_tensors, self.bucket_bytes):
                    flat = bucket_cls(named_tensors=[(name, t.detach()) for name, t in bucket])
                    payload = {"flattened_tensor": flat.get_flattened_tensor(), "metadata": flat.get_metadata()}
                    try:
                        if torch.cuda.is_available():
                            torch.cuda.current_stream().synchronize()
                        # one payload per TP rank: each rank deserializes (and releases) only its own
                        per_rank = [serializer.serialize(payload, output_str=True) for _ in range(self.tp_size)]
                        self.client.update_weights_from_tensor(per_rank, "flattened_bucket", version)
                        total += payload["flattened_tensor"].numel()
                        n += 1
                    finally:  # the server has copied (or failed): drop the bucket, free shared blocks
                        del flat, payload
                        if torch.cuda.is_available():
                            torch.cuda.ipc_collect()
        except EngineError as e:
            raise TransportError(f"IPC weight update to version {version} failed: {e}") from e
        if self.engine is not None:
            self.engine.weight_version = version
        return PushStats(seconds=time.perf_counter() - t0, bytes=total, buckets=n)
