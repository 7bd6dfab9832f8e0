"""HTTP client for an SGLang server (native API, checked against SGLang 0.5.17 and 0.5.23).

Generation: ``POST /generate`` with ``input_ids`` (B lists) and ``sampling_params.n``. With a
batch and n > 1 both versions expand the batch prompt-major: the tokenizer manager loops
``for i in range(batch_size): for _ in range(n)`` and gathers the outputs in that order
(``TokenizerManager._handle_batch_request``), so output j belongs to prompt j // n. (The
``input_ids * n`` in ``GenerateReqInput._expand_inputs`` only fills per-item fields; the first
B items are the original prompts, and ``obj[i]`` is taken for i < B only.) Child request ids
carry no prompt index in 0.5.23, so the order is all there is to go by.

Weight updates carry ``weight_version`` (a string field on the disk/tensor/distributed update
requests of both versions); ``meta_info.weight_version`` of later generations echoes it.
0.5.23 refuses tensor/distributed updates outside ``/begin_weight_update`` ...
``/end_weight_update``; 0.5.17 has no such routes. ``needs_bracket()`` probes the route
(``GET`` on a POST-only route: 405 = present, 404 = absent) once and caches the answer.

Every non-success reply raises ``ServerError`` (an EngineError) carrying the server's message.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from typing import Any

import requests

from gsm8k_grpo.rollout.base import Completion, EngineError, SamplingParams


class ServerError(EngineError):
    """The SGLang server answered with an error (or could not be reached)."""


class ServerUnreachable(ServerError):
    """No HTTP reply at all (connection refused or dropped): the server may have died."""


def parse_weight_version(value: Any) -> int | None:
    """SGLang reports weight_version as a string ("default" until the first versioned update)."""
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def parse_output(out: dict) -> Completion:
    meta = out.get("meta_info") or {}
    ids = [int(t) for t in out.get("output_ids") or []]
    lps = meta.get("output_token_logprobs")
    if lps is None:
        raise ServerError("SGLang /generate reply has no meta_info.output_token_logprobs (return_logprob ignored?)")
    logprobs = [float(x[0]) for x in lps]
    if len(logprobs) != len(ids):
        raise ServerError(f"SGLang returned {len(ids)} output ids but {len(logprobs)} logprobs")
    reason = meta.get("finish_reason") or {}
    kind = reason.get("type") if isinstance(reason, dict) else reason
    if kind not in ("stop", "length"):
        detail = reason.get("message", "") if isinstance(reason, dict) else ""
        raise ServerError(f"SGLang generation ended with finish_reason {kind!r} {detail}".strip())
    return Completion(ids, logprobs, kind, parse_weight_version(meta.get("weight_version")))


def _message(resp: requests.Response) -> str:
    """The server's error message, on one line."""
    try:
        body = resp.json()
    except ValueError:
        body = resp.text or resp.reason
    if isinstance(body, dict):
        err = body.get("error")
        body = err["message"] if isinstance(err, dict) and err.get("message") else (
            body.get("message") or body.get("detail") or body)
    return " ".join(str(body).split())[:1000]


class SGLangClient:
    def __init__(
        self,
        base_url: str,
        *,
        max_prompts_per_request: int = 64,
        max_concurrent_requests: int = 16,
        generate_timeout_s: float = 3600.0,
        control_timeout_s: float = 600.0,
    ):
        self.base_url = base_url.rstrip("/")
        self.max_prompts_per_request = max_prompts_per_request
        self.max_concurrent_requests = max_concurrent_requests
        self.generate_timeout_s = generate_timeout_s
        self.control_timeout_s = control_timeout_s
        # Keep-alive sessions, one per concurrent request (requests.Session is not thread-safe);
        # a pool rather than thread-locals, so short-lived threads do not leak sockets.
        self._idle: queue.SimpleQueue[requests.Session] = queue.SimpleQueue()
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()
        self._bracket: bool | None = None

    # ------------------------------------------------------------------ plumbing
    def _request(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> requests.Response:
        try:
            session = self._idle.get_nowait()
        except queue.Empty:
            session = requests.Session()
            with self._sessions_lock:
                self._sessions.append(session)
        try:
            return session.request(method, self.base_url + path, json=body,
                                   timeout=(10, timeout or self.control_timeout_s))
        except requests.RequestException as e:
            raise ServerUnreachable(f"cannot reach SGLang at {self.base_url}{path}: {e.__class__.__name__}: {e}") from None
        finally:
            self._idle.put(session)

    def call(self, path: str, body: Any = None, *, method: str = "POST", timeout: float | None = None) -> Any:
        """Send one request; raise ServerError unless HTTP 2xx and no ``success: false``."""
        resp = self._request(method, path, body, timeout)
        if resp.status_code // 100 != 2:
            raise ServerError(f"SGLang {path} failed (HTTP {resp.status_code}): {_message(resp)}")
        try:
            data = resp.json() if resp.content else None
        except ValueError:
            data = resp.text
        if isinstance(data, dict) and data.get("success") is False:
            raise ServerError(f"SGLang {path} failed: {' '.join(str(data.get('message', data)).split())}")
        return data

    @contextmanager
    def _closing(self, path: str, body: Any) -> Iterator[None]:
        """Call ``path`` after the block, also when it fails (then the block's error wins)."""
        try:
            yield
        except BaseException:
            try:
                self.call(path, body)
            except EngineError:
                pass
            raise
        self.call(path, body)

    def close(self) -> None:
        with self._sessions_lock:
            for s in self._sessions:
                s.close()
            self._sessions.clear()
        self._idle = queue.SimpleQueue()

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        """B prompts -> B groups of params.n completions, split into concurrent requests."""
        if not prompts:
            return []
        size = self.max_prompts_per_request
        chunks = [prompts[i:i + size] for i in range(0, len(prompts), size)]
        if len(chunks) == 1:
            return self._generate_chunk(chunks[0], params)
        with ThreadPoolExecutor(min(len(chunks), self.max_concurrent_requests)) as pool:
            results = list(pool.map(lambda c: self._generate_chunk(c, params), chunks))
        return [group for r in results for group in r]

    def _generate_chunk(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        # No sampling_seed: all n samples of a prompt share the sampling params, so a seed would
        # make the group identical wherever SGLang honours it.
        sampling = {
            "n": params.n, "temperature": params.temperature, "top_p": params.top_p, "top_k": -1,
            "max_new_tokens": params.max_new_tokens, "stop_token_ids": list(params.stop_token_ids),
        }
        body = {"input_ids": prompts, "sampling_params": sampling, "return_logprob": True}
        outs = self.call("/generate", body, timeout=self.generate_timeout_s)
        b, n = len(prompts), params.n
        if not isinstance(outs, list) or len(outs) != b * n:
            got = len(outs) if isinstance(outs, list) else type(outs).__name__
            raise ServerError(f"SGLang /generate returned {got} outputs for {b} prompts x n={n}")
        completions = [parse_output(o) for o in outs]
        return [completions[i * n:(i + 1) * n] for i in range(b)]  # prompt-major, see module doc

    # ------------------------------------------------------------------ weights
    def update_weights_from_disk(self, path: str, version: int) -> dict:
        return self.call("/update_weights_from_disk",
                         {"model_path": str(path), "flush_cache": True, "weight_version": str(version)})

    def update_weights_from_tensor(self, serialized_named_tensors: list[str], load_format: str | None,
                                   version: int) -> dict:
        return self.call("/update_weights_from_tensor", {
            "serialized_named_tensors": serialized_named_tensors, "load_format": load_format,
            "flush_cache": True, "weight_version": str(version),
        })

    def init_weights_update_group(self, master_address: str, master_port: int, rank_offset: int,
                                  world_size: int, group_name: str, backend: str = "nccl") -> dict:
        return self.call("/init_weights_update_group", {
            "master_address": master_address, "master_port": master_port, "rank_offset": rank_offset,
            "world_size": world_size, "group_name": group_name, "backend": backend,
        })

    def update_weights_from_distributed(self, names: list[str], dtypes: list[str], shapes: list[list[int]],
                                        group_name: str, version: int) -> dict:
        return self.call("/update_weights_from_distributed", {
            "names": names, "dtypes": dtypes, "shapes": shapes, "group_name": group_name,
            "flush_cache": True, "weight_version": str(version),
        })

    def destroy_weights_update_group(self, group_name: str) -> dict:
        return self.call("/destroy_weights_update_group", {"group_name": group_name})

    def needs_bracket(self) -> bool:
        """True when the server wants /begin_weight_update ... /end_weight_update (0.5.23+)."""
        if self._bracket is None:
            resp = self._request("GET", "/begin_weight_update")
            if resp.status_code in (404, 405):
                self._bracket = resp.status_code == 405
            else:
                raise ServerError(f"SGLang /begin_weight_update probe: unexpected HTTP {resp.status_code}")
        return self._bracket

    @contextmanager
    def weight_update_session(self) -> Iterator[None]:
        """Bracket tensor/distributed updates when the server needs it; always closes the bracket."""
        if not self.needs_bracket():
            yield
            return
        self.call("/begin_weight_update", {})
        with self._closing("/end_weight_update", {}):
            yield

    # ------------------------------------------------------------------ memory (--enable-memory-saver)
    def release_memory_occupation(self, tags: list[str] | None = None) -> None:
        self.call("/release_memory_occupation", {"tags": tags})

    def resume_memory_occupation(self, tags: list[str] | None = None) -> None:
        self.call("/resume_memory_occupation", {"tags": tags})


class ReplicaClients:
    """Several SGLang servers (data parallel: one per GPU) behind the SGLangClient interface.

    SGLang 0.5.17 refuses NCCL weight updates when its own --dp-size is above 1, so data
    parallelism is one server per GPU. ``generate`` splits the prompts into one contiguous chunk
    per server; control and weight calls go to every server at once and raise the first error.
    In the NCCL weight group server i joins at ``rank_offset + i * ranks_each``, so one broadcast
    from the trainer reaches every replica.
    """

    def __init__(self, clients: list[SGLangClient], ranks_each: int = 1):
        self.clients = clients
        self.ranks_each = ranks_each
        self.base_url = ", ".join(c.base_url for c in clients)

    def _each(self, calls: list) -> list:
        """Run one zero-argument call per server concurrently; the first failure is raised."""
        with ThreadPoolExecutor(len(calls)) as pool:
            futures = [pool.submit(f) for f in calls]
            return [f.result() for f in futures]

    def _all(self, name: str, *args) -> list:
        return self._each([lambda c=c: getattr(c, name)(*args) for c in self.clients])

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        k = len(self.clients)
        bounds = [len(prompts) * i // k for i in range(k + 1)]  # near-equal contiguous chunks
        parts = [(c, prompts[a:b]) for c, a, b in zip(self.clients, bounds, bounds[1:]) if b > a]
        results = self._each([lambda c=c, p=p: c.generate(p, params) for c, p in parts])
        return [group for r in results for group in r]

    def update_weights_from_disk(self, path: str, version: int) -> list:
        return self._all("update_weights_from_disk", path, version)

    def init_weights_update_group(self, master_address: str, master_port: int, rank_offset: int,
                                  world_size: int, group_name: str, backend: str = "nccl") -> list:
        return self._each([lambda c=c, i=i: c.init_weights_update_group(
            master_address, master_port, rank_offset + i * self.ranks_each, world_size, group_name, backend)
            for i, c in enumerate(self.clients)])

    def update_weights_from_distributed(self, *args) -> list:
        return self._all("update_weights_from_distributed", *args)

    def destroy_weights_update_group(self, group_name: str) -> list:
        return self._all("destroy_weights_update_group", group_name)

    @contextmanager
    def weight_update_session(self) -> Iterator[None]:
        with ExitStack() as stack:
            for c in self.clients:
                stack.enter_context(c.weight_update_session())
            yield

    def release_memory_occupation(self, tags: list[str] | None = None) -> None:
        self._all("release_memory_occupation", tags)

    def resume_memory_occupation(self, tags: list[str] | None = None) -> None:
        self._all("resume_memory_occupation", tags)

    def call(self, path: str, body: Any = None, **kw) -> list:
        return self._each([lambda c=c: c.call(path, body, **kw) for c in self.clients])

    def close(self) -> None:
        for c in self.clients:
            c.close()
