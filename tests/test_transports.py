"""Weight transports and GPU placement, on CPU.

Real: placement logic, safetensors on disk, HTTP to the stand-in server (tests/fake_sglang.py,
as SGLang needs a GPU), and the NCCL transport's protocol between two processes over gloo.
Mocked, because it needs a GPU: CUDA IPC handles. The IPC test swaps SGLang's serializer
for plain pickle (stub modules below) and checks the payload shape and request flow.
"""

from __future__ import annotations

import base64
import json
import pickle
import sys
import types
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gsm8k_grpo.config import RolloutConfig
from gsm8k_grpo.rollout.base import EngineError, SamplingParams
from gsm8k_grpo.rollout.server import SGLangServer
from gsm8k_grpo.rollout.sglang_engine import SGLangEngine
from gsm8k_grpo.weights import disk as disk_mod
from gsm8k_grpo.weights.base import TransportError, buckets
from gsm8k_grpo.placement import Placement, choose_transport, launch_plan, plan
from gsm8k_grpo.weights import make_transport
from gsm8k_grpo.weights.disk import DiskTransport
from gsm8k_grpo.weights.ipc import IPCTransport
from gsm8k_grpo.weights.nccl import NCCLTransport
from server_helpers import alive, wait_for_log_before_health_deadline

FAKE = str(Path(__file__).with_name("fake_sglang.py"))


# ----------------------------------------------------------------------------- placement
@pytest.mark.parametrize("n,rollout,engine,transport,expected", [
    (0, 1, "auto", "auto", Placement([], [], "disk", "", "hf")),
    (0, 1, "hf", "disk", Placement([], [], "disk", "", "hf")),
    (1, 1, "auto", "auto", Placement([0], [0], "ipc", "")),
    (1, 1, "sglang", "disk", Placement([0], [0], "disk", "")),
    (1, 1, "hf", "auto", Placement([0], [], "disk", "", "hf")),
    (2, 1, "auto", "auto", Placement([0], [1], "nccl", "")),
    (2, 1, "sglang", "disk", Placement([0], [1], "disk", "")),
    (2, 0, "sglang", "auto", Placement([0], [0], "ipc", "")),
    (4, 1, "auto", "auto", Placement([0, 1, 2], [3], "nccl", "")),
    (4, 2, "sglang", "nccl", Placement([0, 1], [2, 3], "nccl", "")),
    (8, 1, "auto", "auto", Placement(list(range(7)), [7], "nccl", "")),
])
def test_plan_table(n, rollout, engine, transport, expected):
    p = plan(n, rollout, engine, transport)
    assert (p.trainer_gpus, p.server_gpus, p.transport, p.engine) == (
        expected.trainer_gpus, expected.server_gpus, expected.transport, expected.engine)
    assert p.reason


@pytest.mark.parametrize("n,rollout,ranks", [
    (1, 1, 1),   # one GPU: trainer and SGLang share it, one process
    (2, 1, 1),   # trainer on the first GPU, SGLang on the second: one process
    (3, 1, 2),
    (4, 1, 3),   # 3 torchrun ranks + SGLang on the fourth
    (4, 2, 2),
    (4, 0, 1),   # rollout.gpus=0 shares the first GPU; the others stay idle
    (8, 1, 7),
])
def test_launch_plan_for_gpus_option(n, rollout, ranks):
    visible = ["GPU-a", "GPU-b", "GPU-c", "GPU-d", "GPU-e", "GPU-f", "GPU-g", "GPU-h", "GPU-i"]
    assert launch_plan(n, visible, rollout, "sglang", "auto") == (",".join(visible[:n]), ranks)  # the first N


@pytest.mark.parametrize("args,match", [
    ((3, ["0", "1"], 1, "sglang", "auto"), r"--gpus 3: only 2 GPU\(s\) visible"),
    ((0, ["0"], 1, "sglang", "auto"), "give 1 or more"),
    ((2, ["0", "1"], 2, "sglang", "auto"), "leave at least one GPU for the trainer"),
    ((1, ["0"], 1, "sglang", "nccl"), "Duplicate GPU detected"),
])
def test_launch_plan_refuses(args, match):
    with pytest.raises(ValueError, match=match):
        launch_plan(*args)


def test_relaunch_argv_drops_gpus_and_keeps_the_rest():
    from gsm8k_grpo.cli import relaunch_argv

    args = ["train", "--preset", "1hour", "--gpus", "4", "--set", "rollout.gpus=1", "--gpus=4"]
    assert relaunch_argv(args, 3)[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3",
                                          "-m", "gsm8k_grpo", "train", "--preset", "1hour", "--set", "rollout.gpus=1"]
    assert relaunch_argv(args, 1)[1:] == ["-m", "gsm8k_grpo", "train", "--preset", "1hour", "--set", "rollout.gpus=1"]


def test_plan_without_ipc_falls_back_to_disk():
    assert plan(1, 1, "auto", "auto", ipc_ok=False).transport == "disk"


@pytest.mark.parametrize("args,match", [
    ((0, 1, "sglang", "auto"), "rollout.engine=sglang needs a GPU"),
    ((0, 1, "auto", "nccl"), "weights.transport=nccl needs rollout.engine=sglang"),
    ((1, 1, "hf", "ipc"), "weights.transport=ipc needs rollout.engine=sglang"),
    ((1, 1, "auto", "nccl"), "Duplicate GPU detected"),
    ((2, 1, "auto", "ipc"), "ipc needs trainer and SGLang on the same GPU"),
    ((2, 2, "auto", "auto"), "leave at least one GPU for the trainer"),
    ((4, 7, "sglang", "nccl"), "valid: 0 to 3 with 4 GPUs"),
    ((1, 1, "auto", "ipc", False), "ipc is unavailable here"),
    ((1, 1, "auto", "tcp"), "valid: auto, ipc, disk, nccl"),
    ((1, 1, "vllm", "auto"), "valid: auto, sglang, hf"),
])
def test_plan_refuses_impossible(args, match):
    with pytest.raises(ValueError, match=match) as e:
        plan(*args)
    assert "\n" not in str(e.value)


def test_choose_transport_by_uuid():
    assert choose_transport("auto", ["GPU-a"], ["GPU-a"], True) == "ipc"
    assert choose_transport("auto", ["GPU-a"], ["GPU-b"], True) == "nccl"
    assert choose_transport("disk", ["GPU-a"], ["GPU-b"], True) == "disk"
    assert choose_transport("auto", ["GPU-a"], [], True) == "disk"


def test_make_transport_needs_sglang_for_ipc(tmp_path):
    with pytest.raises(ValueError, match="needs rollout.engine=sglang"):
        make_transport("ipc", StubEngine(tiny_model()), base_dir(tmp_path), tmp_path, 1)


# ----------------------------------------------------------------------------- helpers
def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Embedding(11, 4), torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))


def base_dir(tmp_path: Path) -> Path:
    d = tmp_path / "base"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text('{"model_type": "tiny"}')
    (d / "generation_config.json").write_text("{}")
    return d


class StubEngine:
    """In-process engine: loads the HF-layout dir into a real torch module."""

    def __init__(self, model: torch.nn.Module, fail: bool = False):
        self.model, self.fail, self.weight_version, self.seen = model, fail, 0, []

    def load_weights_from_disk(self, path: str, version: int) -> None:
        d = Path(path)
        self.seen.append((d, sorted(p.name for p in d.iterdir())))
        if self.fail:
            raise EngineError("engine refused the weights")
        index = json.loads((d / "model.safetensors.index.json").read_text())
        state = {}
        for shard in set(index["weight_map"].values()):
            state.update(load_file(d / shard))
        assert set(state) == set(index["weight_map"])
        self.model.load_state_dict(state)
        self.weight_version = version

    def generate(self, prompts, params):
        raise NotImplementedError

    def close(self) -> None:
        pass


def fake_engine(tmp_path: Path, *flags: str) -> SGLangEngine:
    return SGLangEngine("fake", RolloutConfig(server_timeout_s=20), tmp_path, launch_cmd=[sys.executable, FAKE, *flags])


# ----------------------------------------------------------------------------- bucketing / disk
def test_buckets_split_by_bytes():
    ts = [(f"t{i}", torch.zeros(256)) for i in range(5)]  # 1 KiB each
    assert [len(b) for b in buckets(ts, 2048)] == [2, 2, 1]
    assert [len(b) for b in buckets([("big", torch.zeros(4096))] + ts[:1], 2048)] == [1, 1]


def test_disk_into_in_process_engine(tmp_path):
    src, dst = tiny_model(), StubEngine(torch.nn.Sequential(torch.nn.Embedding(11, 4), torch.nn.Linear(4, 3),
                                                            torch.nn.Linear(3, 2)))
    t = DiskTransport(dst, base_dir(tmp_path), tmp_path / "out", bucket_mb=1)
    t.bucket_bytes = 64  # several shards from a tiny model
    stats = t.push(src.state_dict().items(), version=4)
    assert dst.weight_version == 4 and stats.buckets >= 3
    assert stats.bytes == sum(v.numel() * v.element_size() for v in src.state_dict().values())
    for k, v in src.state_dict().items():
        assert torch.equal(dst.model.state_dict()[k], v)
    d, files = dst.seen[0]
    assert {"config.json", "generation_config.json", "model.safetensors.index.json"} <= set(files)
    assert f"model-00001-of-{stats.buckets:05d}.safetensors" in files
    assert not d.exists()  # removed afterwards


def test_disk_tied_weights_and_cleanup_on_error(tmp_path):
    w = torch.randn(5, 3)
    eng = StubEngine(torch.nn.Module(), fail=True)
    t = DiskTransport(eng, base_dir(tmp_path), tmp_path / "out", bucket_mb=1)
    with pytest.raises(TransportError, match="engine refused the weights"):
        t.push([("embed.weight", w), ("lm_head.weight", w)], version=1)  # shared storage is fine
    d, files = eng.seen[0]
    assert len([f for f in files if f.endswith(".safetensors")]) == 1 and not d.exists()


def test_disk_falls_back_to_out_dir_without_shm_room(tmp_path, monkeypatch):
    monkeypatch.setattr(disk_mod, "_free_bytes", lambda p: 0)
    eng = StubEngine(torch.nn.Linear(2, 2))
    DiskTransport(eng, base_dir(tmp_path), tmp_path / "out", bucket_mb=1).push(
        torch.nn.Linear(2, 2).state_dict().items(), 2)
    assert eng.seen[0][0].parent == tmp_path / "out"


def test_disk_into_fake_server(tmp_path):
    with fake_engine(tmp_path) as eng:
        t = make_transport("disk", eng, base_dir(tmp_path), tmp_path, bucket_mb=1)
        stats = t.push(tiny_model().state_dict().items(), version=1)
        rec = eng.client.call("/_state", method="GET")["disk_updates"][0]
        assert rec["weight_version"] == "1" and eng.weight_version == 1
        assert set(rec["weight_map"]) == set(tiny_model().state_dict()) and stats.buckets == 1
        assert "config.json" in rec["files"] and not Path(rec["path"]).exists()


# ----------------------------------------------------------------------------- nccl protocol over gloo
@pytest.mark.parametrize("bracket", [False, True])
def test_nccl_protocol_over_gloo(tmp_path, monkeypatch, bracket):
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")  # the fake server inherits it
    tensors = [("a.weight", torch.randn(3, 4)), ("b.bias", torch.arange(5, dtype=torch.int64)),
               ("c.weight", torch.randn(2, 2).to(torch.bfloat16)), ("d.weight", torch.randn(300))]
    with fake_engine(tmp_path, *(["--bracket"] if bracket else [])) as eng:
        t = NCCLTransport(eng.client, bucket_mb=1, group_name=f"test-{uuid.uuid4().hex[:8]}", backend="gloo",
                          timeout_s=30, engine=eng)
        t.bucket_bytes = 1024  # d.weight (1200 B) goes alone
        try:
            stats = t.push(iter(tensors), version=2)
            stats2 = t.push(iter(tensors[:1]), version=3)  # the group is reused
        finally:
            t.close()
        state = eng.client.call("/_state", method="GET")
        assert len(eng.client._sessions) <= 3  # pooled keep-alive sessions, not one per request thread
    assert stats.buckets == 2 and stats2.buckets == 1 and eng.weight_version == 3
    assert [d["names"] for d in state["distributed"]] == [["a.weight", "b.bias", "c.weight"], ["d.weight"], ["a.weight"]]
    assert state["distributed"][0]["dtypes"] == ["float32", "int64", "bfloat16"]
    for name, sent in tensors:
        got = state["received"][name]
        assert got["dtype"] == str(sent.dtype) and got["values"] == sent.float().flatten().tolist()
    assert state["weight_version"] == "3" and not state["session_open"]
    assert "/destroy_weights_update_group" in state["calls"]


def test_nccl_under_torchrun_env(tmp_path, monkeypatch):
    """Trainer rank 0 under torchrun: torchrun's variables (agent store on) must reach neither our
    rendezvous nor the server's. Before the fix both sides waited on a store nobody hosted (the
    4-GPU run of 2026-11-27 stalled in SGLang's distributed init); here that is a timeout."""
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    from gsm8k_grpo.distributed import free_port
    for k, v in {"TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_RUN_ID": "none", "RANK": "0",
                 "LOCAL_RANK": "0", "WORLD_SIZE": "3", "LOCAL_WORLD_SIZE": "3", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(k, v)
    with fake_engine(tmp_path) as eng:
        env = eng.client.call("/_state", method="GET")["launcher_env"]
        t = NCCLTransport(eng.client, 1, group_name=f"test-{uuid.uuid4().hex[:8]}", backend="gloo", timeout_s=10,
                          engine=eng)
        try:
            t.push(iter([("a.w", torch.ones(2))]), 1)
        finally:
            t.close()
        assert eng.weight_version == 1
    assert env == {}  # none of torchrun's variables reached the server


# ----------------------------------------------------------------------------- several server GPUs
def two_gpu_engine(tmp_path: Path, parallel: str = "dp", *flags: str, timeout: float = 30) -> SGLangEngine:
    """rollout.gpus=2 on GPUs 0 and 1, served by stand-ins (CUDA_VISIBLE_DEVICES is only passed on)."""
    return SGLangEngine("fake", RolloutConfig(server_timeout_s=timeout, parallel=parallel), tmp_path, gpu_ids=[0, 1],
                        launch_cmd=[sys.executable, FAKE, *flags])


def test_data_parallel_servers_split_generation_and_all_take_each_push(tmp_path, monkeypatch):
    """parallel=dp: one server per GPU. A batch is split between them and comes back in order;
    a disk push reaches both; one NCCL group of 1 + 2 ranks (server i at rank 1 + i) carries one
    broadcast to both (gloo here; SGLang's own --dp-size refuses NCCL updates)."""
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    with two_gpu_engine(tmp_path) as eng:
        assert (len(eng.servers), eng.tp_size, eng.server_ranks) == (2, 1, 2)
        assert [s.gpu_ids for s in eng.servers] == [[0], [1]] and eng.startup_s > 0
        groups = eng.generate([[1, 2, i] for i in range(5)], SamplingParams(n=2, max_new_tokens=3))
        assert [[c.token_ids[:2] for c in g] for g in groups] == [[[i, 100], [i, 101]] for i in range(5)]
        assert [s["generate_calls"] for s in eng.client.call("/_state", method="GET")] == [1, 1]
        make_transport("disk", eng, base_dir(tmp_path), tmp_path, bucket_mb=1).push(tiny_model().state_dict().items(), 1)
        t = NCCLTransport(eng.client, 1, group_name=f"test-{uuid.uuid4().hex[:8]}", backend="gloo",
                          server_ranks=eng.server_ranks, timeout_s=30, engine=eng)
        try:
            t.push(iter([("a.w", torch.arange(3.0))]), 2)
        finally:
            t.close()
        states = eng.client.call("/_state", method="GET")
        eng.generate([[7]], SamplingParams(n=2, max_new_tokens=2))  # both report the pushed version
        # what grpo train builds: the group spans every server (CUDA's device query mocked: no GPU here)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        assert make_transport("nccl", eng, base_dir(tmp_path), tmp_path, bucket_mb=1).server_ranks == 2
    for st in states:
        assert len(st["disk_updates"]) == 1 and st["weight_version"] == "2"
        assert st["received"]["a.w"]["values"] == [0.0, 1.0, 2.0]
    assert "/destroy_weights_update_group" in states[1]["calls"]
    assert (tmp_path / "sglang_server.log").is_file() and (tmp_path / "sglang_server_1.log").is_file()


def test_tensor_parallel_is_one_server_over_both_gpus(tmp_path):
    with two_gpu_engine(tmp_path, "tp") as eng:
        assert (len(eng.servers), eng.tp_size, eng.server_ranks) == (1, 2, 2)
        assert eng.servers[0].gpu_ids == [0, 1] and "--tp-size 2" in " ".join(eng.servers[0].command(1))


def test_data_parallel_start_failure_stops_every_server(tmp_path, monkeypatch):
    wait_for_log_before_health_deadline(monkeypatch, "listening on 127.0.0.1")  # not the machine's speed
    launched = []
    original = SGLangServer._spawn

    def spawn(self, port):
        original(self, port)
        launched.append((self, self.proc.pid))

    monkeypatch.setattr(SGLangServer, "_spawn", spawn)
    with pytest.raises(EngineError, match="not healthy after 2s") as e:
        two_gpu_engine(tmp_path, "dp", "--never-healthy", timeout=2)
    assert "never healthy" in str(e.value)  # the log tail of the server that failed
    assert len(launched) == 2
    for server, pid in launched:  # both children were stopped and reaped, the second one too
        assert server.proc is None and not alive(pid)


def test_nccl_refuses_shared_gpu():
    with pytest.raises(TransportError, match="Duplicate GPU detected.*use weights.transport=ipc or disk"):
        NCCLTransport(None, 1, trainer_gpu_uuids=["GPU-1"], server_gpu_uuids=["GPU-0", "GPU-1"], backend="gloo")


def test_nccl_server_failure_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    with fake_engine(tmp_path) as eng:
        t = NCCLTransport(eng.client, 1, group_name=f"test-{uuid.uuid4().hex[:8]}", backend="gloo", timeout_s=30,
                          engine=eng)
        try:
            with pytest.raises(TransportError, match=r"NCCL weight update to version 1 \(bucket 0[^)]*\) failed.*KeyError: 'bad.w'"):
                t.push(iter([("bad.w", torch.zeros(2))]), 1)
        finally:
            t.close()
        assert eng.weight_version == 0


def test_nccl_stalled_broadcast_names_the_stage(tmp_path, monkeypatch, caplog):
    """A server that never joins the broadcast (as with NCCL peers that disagree) ends in a timeout
    that names the stage and the pending side, and the group is not reused afterwards."""
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    caplog.set_level("INFO", logger="gsm8k_grpo")
    with fake_engine(tmp_path, "--stall-broadcast") as eng:
        t = NCCLTransport(eng.client, 1, group_name=f"test-{uuid.uuid4().hex[:8]}", backend="gloo", timeout_s=3,
                          engine=eng)
        try:
            with pytest.raises(TransportError, match=r"version 1 \(bucket 0, first broadcast: NCCL communicator "
                               r"setup\) timed out after 3s \(.*POST /update_weights_from_distributed: still waiting"):
                t.push(iter([("a.w", torch.zeros(2))]), 1)
            with pytest.raises(TransportError, match="unusable after an earlier failure"):
                t.push(iter([("a.w", torch.zeros(2))]), 2)
        finally:
            t.close()
        assert eng.weight_version == 0
    assert "NCCL weight group: ready" in caplog.text and "NCCL push v1 bucket 0: 1 tensors" in caplog.text


# ----------------------------------------------------------------------------- ipc (CUDA mocked)
@dataclass
class _Meta:  # stands in for sglang's FlattenedTensorMetadata
    name: str
    shape: torch.Size
    dtype: torch.dtype
    start_idx: int
    end_idx: int


class _Bucket:  # the same flattening as sglang's FlattenedTensorBucket
    def __init__(self, named_tensors):
        flats, self.meta, i = [], [], 0
        for name, t in named_tensors:
            f = t.flatten().view(torch.uint8)
            self.meta.append(_Meta(name, t.shape, t.dtype, i, i + f.numel()))
            flats.append(f)
            i += f.numel()
        self.flat = torch.cat(flats)

    def get_flattened_tensor(self):
        return self.flat

    def get_metadata(self):
        return self.meta


class _Serializer:  # plain pickle instead of CUDA IPC handles (mocked: needs a GPU)
    @staticmethod
    def serialize(obj, output_str=False):
        return base64.b64encode(pickle.dumps(obj)).decode()


@pytest.fixture
def stub_sglang(monkeypatch):
    mods = {name: types.ModuleType(name) for name in (
        "sglang", "sglang.srt", "sglang.srt.utils", "sglang.srt.utils.patch_torch", "sglang.srt.weight_sync",
        "sglang.srt.weight_sync.tensor_bucket")}
    mods["sglang.srt.utils"].MultiprocessingSerializer = _Serializer
    mods["sglang.srt.utils.patch_torch"].monkey_patch_torch_reductions = lambda: None
    mods["sglang.srt.weight_sync.tensor_bucket"].FlattenedTensorBucket = _Bucket
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)


def test_ipc_payload_and_bracket(tmp_path, stub_sglang):
    tensors = [("x", torch.randn(4, 4)), ("y", torch.randn(3).to(torch.bfloat16)), ("z", torch.randn(70))]
    with fake_engine(tmp_path, "--bracket") as eng:
        t = IPCTransport(eng.client, bucket_mb=1, tp_size=2, engine=eng)
        t.bucket_bytes = 128
        stats = t.push(iter(tensors), version=5)
        state = eng.client.call("/_state", method="GET")
    assert stats.buckets == 2 and eng.weight_version == 5 and state["weight_version"] == "5"
    assert state["calls"] == ["/begin_weight_update"] + ["/update_weights_from_tensor"] * 2 + ["/end_weight_update"]
    got = {}
    for upd in state["tensor_updates"]:
        assert upd["load_format"] == "flattened_bucket" and len(upd["serialized_named_tensors"]) == 2
        payload = pickle.loads(base64.b64decode(upd["serialized_named_tensors"][0]))
        assert set(payload) == {"flattened_tensor", "metadata"}
        for m in payload["metadata"]:
            got[m.name] = payload["flattened_tensor"][m.start_idx:m.end_idx].view(m.dtype).reshape(m.shape)
    for name, sent in tensors:
        assert torch.equal(got[name], sent)


def test_ipc_without_sglang_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "sglang", None)
    with pytest.raises(TransportError, match="needs SGLang importable in the trainer"):
        IPCTransport(None, 1).push(iter([("a", torch.zeros(1))]), 1)
