"""A stand-in for an SGLang HTTP server, for CPU tests (real SGLang needs a GPU).

    python tests/fake_sglang.py --port P [--bracket] [--die-after N] [--never-healthy]
                                [--busy-flushes K] [--weight-version V] [--stall-broadcast]
                                [--generate-delay S]

It speaks the subset of SGLang 0.5.17's native API our client uses, with the same request
fields and reply shapes: /health, /generate (deterministic fake tokens and logprobs; honours
n, max_new_tokens, stop_token_ids; a batch with n > 1 is answered prompt-major, as the real
TokenizerManager does), the weight-update routes (they record what they got and bump
weight_version), /init_weights_update_group (really joins a gloo group as rank 1, built like
SGLang's init_custom_process_group) and /update_weights_from_distributed (really receives
the broadcast), /flush_cache (400 for the first K calls, like a busy server), pause/continue,
/model_info, /update_weight_version.

Like SGLang (``_set_envs_and_config``, entrypoints/engine.py:1582 in 0.5.17) the fake sets
NCCL_CUMEM_ENABLE=0 unless it inherited the variable, and like NCCL it then refuses to pair with
a trainer whose setting differs: the trainer's NCCL defaults to cuMem on, so an uninherited
variable means a mismatch and /update_weights_from_distributed never joins the broadcast (the
request hangs, as the real pair did on 2 GPUs). ``--stall-broadcast`` forces that stall.

Before it is healthy it runs a world-size-1 tcp:// rendezvous, like SGLang's own distributed init
(which hangs under torchrun's inherited variables). ``--bracket`` adds SGLang 0.5.23's
/begin_weight_update and /end_weight_update and refuses tensor/distributed updates outside them.
``--die-after N`` exits abruptly on the (N+1)-th /generate. ``--generate-delay S`` makes each
/generate take S seconds; a weight update that arrives meanwhile is logged (a batch would mix
weight versions). GET /_state returns what was recorded (tests only). Unknown launcher flags are
ignored, so the real launcher's extra arguments can be passed.

Fake generation: sample j of prompt p yields tokens p[-1], 100 + j, 200, 201, 202, ... and
logprob(token) = -token / 1000.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ARGS: argparse.Namespace
LOCK = threading.Lock()
STATE: dict = {"weight_version": "default", "disk_updates": [], "tensor_updates": [], "distributed": [],
               "received": {}, "paused": False, "session_open": False, "calls": [], "generate_calls": 0,
               "flush_calls": 0, "generating": 0,
               # torchrun's variables we inherited (the trainer must not pass them on)
               "launcher_env": {k: v for k, v in os.environ.items()
                                if k in ("RANK", "WORLD_SIZE", "MASTER_PORT") or k.startswith("TORCHELASTIC_")}}
GROUPS: dict = {}
TRAINER_CUMEM = "1"  # the trainer's (our parent's) value: what we inherited, else NCCL's own default 1
STALL_S = 120.0      # how long a stalled update waits before giving up (the test's timeout is shorter)


def log(msg: str) -> None:
    print(f"fake sglang: {msg}", flush=True)


def fake_sample(prompt: list[int], j: int, sp: dict) -> dict:
    stops = set(sp.get("stop_token_ids") or [])
    ids, reason = [], {"type": "length", "length": sp.get("max_new_tokens", 128)}
    for t in range(sp.get("max_new_tokens", 128)):
        tok = prompt[-1] if t == 0 else 100 + j if t == 1 else 198 + t
        ids.append(tok)
        if tok in stops:
            reason = {"type": "stop", "matched": tok}
            break
    return {"output_ids": ids, "meta_info": {
        "id": os.urandom(8).hex(), "finish_reason": reason, "prompt_tokens": len(prompt),
        "completion_tokens": len(ids), "weight_version": STATE["weight_version"],
        "output_token_logprobs": [[-tok / 1000, tok, None] for tok in ids]}}


def own_dist_init() -> None:
    """SGLang's own distributed init before it is healthy (its TP group: world size 1, a tcp://
    rendezvous). Under torchrun's inherited variables this waits on a store nobody hosts, as the real
    server did on 4 GPUs; here it gives up after 20 s instead of hanging."""
    from datetime import timedelta

    from torch.distributed import rendezvous

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        next(rendezvous(f"tcp://127.0.0.1:{port}", 0, 1, timeout=timedelta(seconds=20)))
    except Exception as e:  # noqa: BLE001
        log(f"torch distributed init failed: {e.__class__.__name__}: {str(e)[:200]}")
        sys.exit(1)


def join_group(body: dict) -> None:
    """SGLang's init_custom_process_group on the server side (rank = rank_offset + tp_rank 0)."""
    from datetime import timedelta

    import torch.distributed as dist
    from torch.distributed.distributed_c10d import PrefixStore, _new_process_group_helper, _world, rendezvous

    name, world, rank = body["group_name"], body["world_size"], body["rank_offset"]
    timeout = timedelta(seconds=60)
    url = f"tcp://{body['master_address']}:{body['master_port']}"
    store, rank, world = next(rendezvous(url, rank, world, timeout=timeout))
    store.set_timeout(timeout)
    pg, _ = _new_process_group_helper(world, rank, [], dist.Backend(body["backend"]), PrefixStore(name, store),
                                      group_name=name, backend_options=None, timeout=timeout)
    _world.pg_group_ranks[pg] = {i: i for i in range(world)}
    GROUPS[name] = pg


def receive(body: dict) -> None:
    """Like SGLang's WeightUpdater: one async broadcast per tensor, in order, then wait."""
    import torch
    import torch.distributed as dist

    pg = GROUPS[body["group_name"]]
    got, works = [], []
    for name, dtype, shape in zip(body["names"], body["dtypes"], body["shapes"]):
        t = torch.empty(shape, dtype=getattr(torch, dtype))
        works.append(dist.broadcast(t, src=0, group=pg, async_op=True))
        got.append((name, t))
    for w in works:
        w.wait()
    for name, t in got:
        STATE["received"][name] = {"dtype": str(t.dtype), "values": t.float().flatten().tolist()}


def read_disk_dir(path: str) -> dict:
    files = sorted(os.listdir(path))
    with open(os.path.join(path, "model.safetensors.index.json")) as f:
        index = json.load(f)
    return {"path": path, "files": files, "weight_map": index["weight_map"]}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # keep the log for our own lines
        pass

    def reply(self, code: int, obj=None, text: str | None = None) -> None:
        data = text.encode() if text is not None else json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain" if text is not None else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def ok(self, message: str = "Success") -> None:
        self.reply(200, {"success": True, "message": message})

    def fail(self, message: str) -> None:
        self.reply(400, {"success": False, "message": message})

    def do_GET(self) -> None:
        if self.path == "/health":
            return self.reply(503 if ARGS.never_healthy else 200, text="")
        if self.path == "/model_info":
            return self.reply(200, {"model_path": "fake", "weight_version": STATE["weight_version"]})
        if self.path == "/_state":
            with LOCK:
                return self.reply(200, STATE)
        if self.path in ("/begin_weight_update", "/end_weight_update") and ARGS.bracket:
            return self.reply(405, {"detail": "Method Not Allowed"})
        self.reply(404, {"detail": "Not Found"})

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(n) or b"{}") if n else {}
        route = getattr(self, "r_" + self.path.strip("/"), None)
        if self.path in ("/begin_weight_update", "/end_weight_update") and not ARGS.bracket:
            route = None
        if route is None:
            return self.reply(404, {"detail": "Not Found"})
        with LOCK:
            STATE["calls"].append(self.path)
            if self.path.startswith("/update_weights") and STATE["generating"]:
                log(f"{self.path} arrived during a /generate: a batch would mix weight versions")
        route(body)

    def r_generate(self, body: dict) -> None:
        with LOCK:
            STATE["generate_calls"] += 1
            if ARGS.die_after is not None and STATE["generate_calls"] > ARGS.die_after:
                log("scheduler crashed: CUDA error: an illegal memory access was encountered (fake)")
                os._exit(3)
            STATE["generating"] += 1
        try:
            prompts, sp = body["input_ids"], body["sampling_params"]
            if not body.get("return_logprob"):
                return self.fail("test client must ask for logprobs")
            # TokenizerManager._handle_batch_request: for i in range(B): for _ in range(n) -> prompt-major
            outs = [fake_sample(p, j, sp) for p in prompts for j in range(sp.get("n", 1))]
            time.sleep(ARGS.generate_delay)
            self.reply(200, outs)
        finally:
            with LOCK:
                STATE["generating"] -= 1

    def _versioned(self, body: dict, message: str) -> None:
        if body.get("weight_version") is not None:
            STATE["weight_version"] = body["weight_version"]
        self.ok(message)

    def r_update_weights_from_disk(self, body: dict) -> None:
        with LOCK:
            STATE["disk_updates"].append({**read_disk_dir(body["model_path"]), "weight_version": body.get("weight_version")})
            self._versioned(body, "Succeeded to update model weights.")

    def _check_session(self, what: str) -> bool:
        if ARGS.bracket and not STATE["session_open"]:
            self.fail(f"{what} must run between begin_weight_update() and end_weight_update()")
            return False
        return True

    def r_update_weights_from_tensor(self, body: dict) -> None:
        with LOCK:
            if self._check_session("update_weights_from_tensor"):
                STATE["tensor_updates"].append({k: body.get(k) for k in
                                                ("serialized_named_tensors", "load_format", "weight_version")})
                self._versioned(body, "Success")

    def r_init_weights_update_group(self, body: dict) -> None:
        for key in ("master_address", "master_port", "rank_offset", "world_size"):
            if key not in body:
                return self.fail(f"missing {key}")
        try:
            join_group(body)
        except Exception as e:  # noqa: BLE001 - reported like SGLang does
            return self.fail(f"Failed to initialize custom process group: {e}.")
        self.ok("Succeeded to initialize custom process group.")

    def r_update_weights_from_distributed(self, body: dict) -> None:
        cumem = os.environ["NCCL_CUMEM_ENABLE"]
        if ARGS.stall_broadcast or cumem != TRAINER_CUMEM:
            log(f"update_weights_from_distributed: not joining the broadcast (NCCL_CUMEM_ENABLE={cumem} here, "
                f"{TRAINER_CUMEM} in the trainer: NCCL peers that disagree never connect)")
            threading.Event().wait(STALL_S)
            return self.fail("Failed to update parameter online: stalled (fake).")
        with LOCK:
            if not self._check_session("update_weights_from_distributed"):
                return
            if body["group_name"] not in GROUPS:
                return self.fail(f"Group {body['group_name']} not in {list(GROUPS)}")
            receive(body)
            unknown = [n for n in body["names"] if n.startswith("bad.")]
            if unknown:  # like a model's load_weights meeting a name it does not have
                return self.fail(f"Failed to update parameter online: KeyError: {unknown[0]!r}.")
            STATE["distributed"].append({k: body[k] for k in ("names", "dtypes", "shapes")})
            self._versioned(body, "Succeeded to update parameter online.")

    def r_destroy_weights_update_group(self, body: dict) -> None:
        import torch.distributed as dist

        pg = GROUPS.pop(body.get("group_name", "weight_update_group"), None)
        if pg is None:
            return self.fail("The group to be destroyed does not exist.")
        dist.destroy_process_group(pg)
        self.ok("Succeeded to destroy custom process group.")

    def r_begin_weight_update(self, body: dict) -> None:
        with LOCK:
            if STATE["session_open"]:
                return self.fail("a weight-update session is already open; call end_weight_update() first")
            STATE["session_open"] = True
        self.ok()

    def r_end_weight_update(self, body: dict) -> None:
        with LOCK:
            if not STATE["session_open"]:
                return self.fail("no weight-update session is open; call begin_weight_update() first")
            STATE["session_open"] = False
        self.ok()

    def r_flush_cache(self, body: dict) -> None:
        with LOCK:
            STATE["flush_calls"] += 1
            busy = STATE["flush_calls"] <= ARGS.busy_flushes
        self.reply(400 if busy else 200, text="Flush cache failed.\n" if busy else "Cache flushed.\n")

    def r_pause_generation(self, body: dict) -> None:
        STATE["paused"] = True
        self.reply(200, {"message": "Generation paused successfully.", "status": "ok"})

    def r_continue_generation(self, body: dict) -> None:
        STATE["paused"] = False
        self.reply(200, {"message": "Generation continued successfully.", "status": "ok"})

    def r_update_weight_version(self, body: dict) -> None:
        STATE["weight_version"] = body["new_version"]
        self.reply(200, {"success": True, "message": "ok", "new_version": body["new_version"]})

    def r_release_memory_occupation(self, body: dict) -> None:
        log("release_memory_occupation")
        self.reply(200, None)

    def r_resume_memory_occupation(self, body: dict) -> None:
        log("resume_memory_occupation")
        self.reply(200, None)


def main() -> None:
    global ARGS, TRAINER_CUMEM
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--bracket", action="store_true")
    p.add_argument("--die-after", type=int, default=None)
    p.add_argument("--never-healthy", action="store_true")
    p.add_argument("--busy-flushes", type=int, default=0)
    p.add_argument("--weight-version", default="default")
    p.add_argument("--stall-broadcast", action="store_true")
    p.add_argument("--generate-delay", type=float, default=0.0, help="seconds each /generate takes")
    ARGS, unknown = p.parse_known_args()
    TRAINER_CUMEM = os.environ.get("NCCL_CUMEM_ENABLE", "1")  # the parent is the trainer
    if "NCCL_CUMEM_ENABLE" not in os.environ:  # SGLang's _set_envs_and_config (enable_symm_mem off)
        os.environ["NCCL_CUMEM_ENABLE"] = "0"
    STATE["weight_version"] = ARGS.weight_version
    own_dist_init()
    server = ThreadingHTTPServer(("127.0.0.1", ARGS.port), Handler)
    server.daemon_threads = True
    log(f"listening on 127.0.0.1:{ARGS.port} (ignored args: {unknown})"
        + (" - never healthy" if ARGS.never_healthy else ""))
    try:
        server.serve_forever()
    finally:
        sys.stdout.flush()


if __name__ == "__main__":
    main()
