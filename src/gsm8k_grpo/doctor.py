"""`grpo doctor`: read-only host checks before a GRPO run.

Every check returns a :class:`Check` (ok / warn / fail, a one-line detail, a one-line fix).
No check raises: an unexpected exception becomes a 'fail' carrying the exception's first line.
``exit_code`` is 0 when a run can start (warnings allowed) and 1 when any check fails.

No torch import at module level: the CLI imports this module and must start fast. The only
slow parts are the two-process GPU checks (a real NCCL all-reduce, a CUDA IPC hand-over),
which run only when GPUs exist and ``quick`` is False, and the hub HEAD request (3 s timeout),
which runs only when the model or data set is neither local nor cached.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Literal

from gsm8k_grpo import memory
from gsm8k_grpo.config import RunConfig

Status = Literal["ok", "warn", "fail"]

GiB = 2**30
SHM_MIN = 2 * GiB
DISK_WARN = 10 * GiB
DISK_FAIL = 2 * GiB
HUB_TIMEOUT_S = 3.0
NCCL_TIMEOUT_S = 60.0
IPC_TIMEOUT_S = 45.0
SGLANG_INSTALL = "pip install 'gsm8k-grpo[sglang]'"
DUPLICATE_GPU = "two ranks on one GPU fail with 'Duplicate GPU detected'"


@dataclass
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""


# ----------------------------------------------------------------------------- helpers


def _one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0]}" if msg else type(e).__name__


def _gib(n: float) -> str:
    return f"{n / GiB:.1f} GiB"


def _pkg_version(*dists: str) -> str | None:
    """Installed version of the first distribution found (metadata only: never imports the package)."""
    for d in dists:
        try:
            return metadata.version(d)
        except metadata.PackageNotFoundError:
            continue
    return None


def _ver_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split("+")[0].split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
        if not part.isdigit():
            break
    return tuple(out)


@dataclass
class _Gpu:
    index: int
    name: str
    total: int
    free: int | None
    cc: tuple[int, int]

    @property
    def bf16(self) -> bool:
        return self.cc >= (8, 0)


@dataclass
class _Ctx:
    """Facts shared between checks, filled in as the checks run (in order)."""

    cfg: RunConfig
    run_dir: Path
    quick: bool
    torch: Any = None
    torch_error: str | None = None
    cuda: bool = False
    gpus: list[_Gpu] = field(default_factory=list)
    ipc_ok: bool | None = None
    nccl_ok: bool | None = None
    placement: Any = None
    _hub: tuple[bool | None, str] | None = None

    # -- derived facts
    @property
    def sglang_installed(self) -> bool:
        return _pkg_version("sglang") is not None

    def engine(self) -> str:
        """The engine `grpo train` would run: sglang on a GPU host with SGLang installed, else hf."""
        e = self.cfg.rollout.engine
        if e != "auto":
            return e
        return "sglang" if (self.cuda and self.sglang_installed) else "hf"

    def trainer_on_gpu(self) -> bool:
        d = self.cfg.trainer.device
        return d == "cuda" or (d == "auto" and self.cuda)

    def hub(self) -> tuple[bool | None, str]:
        """(reachable or None when not probed, words). One HEAD request per doctor run, bounded by HUB_TIMEOUT_S."""
        if self._hub is None:
            self._hub = _hub_reachable(self.quick)
        return self._hub


def _load_torch(ctx: _Ctx) -> None:
    if ctx.torch is None and ctx.torch_error is None:
        try:
            import torch

            ctx.torch = torch
        except Exception as e:  # noqa: BLE001 - any import failure is reported, not raised
            ctx.torch_error = _one_line(e)


def _hub_reachable(quick: bool) -> tuple[bool | None, str]:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False, "HF_HUB_OFFLINE is set"
    if quick:
        return None, "hub not probed (--quick)"
    url = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    result: list[tuple[bool, str]] = []

    def probe() -> None:
        import urllib.error
        import urllib.request

        try:
            req = urllib.request.Request(url, method="HEAD")
            with urllib.request.urlopen(req, timeout=HUB_TIMEOUT_S):
                pass
            result.append((True, f"{url} reachable"))
        except urllib.error.HTTPError as e:  # an HTTP answer still proves the network works
            result.append((True, f"{url} reachable (HTTP {e.code})"))
        except Exception as e:  # noqa: BLE001
            result.append((False, f"{url} unreachable ({_one_line(e)})"))

    t = threading.Thread(target=probe, daemon=True)  # a thread also bounds a slow DNS lookup
    t.start()
    t.join(HUB_TIMEOUT_S + 0.5)
    if not result:
        return False, f"{url} unreachable (no answer in {HUB_TIMEOUT_S:.0f} s)"
    return result[0]


def _hf_cache_dir() -> Path:
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def _cached_snapshot(repo_id: str, kind: str = "models") -> Path | None:
    """A snapshot folder of repo_id in the local HF hub cache (no network), or None."""
    snaps = _hf_cache_dir() / f"{kind}--{repo_id.replace('/', '--')}" / "snapshots"
    if not snaps.is_dir():
        return None
    cands = sorted((p for p in snaps.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    if kind == "models":
        cands = [p for p in cands if (p / "config.json").exists()]
    return cands[0] if cands else None


def _looks_local(path: str) -> bool:
    """Hub ids are NAME or ORG/NAME; anything else is meant as a local folder."""
    return path.startswith(("/", ".", "~")) or path.count("/") > 1


def _model_dir(ctx: _Ctx) -> tuple[Path | None, str]:
    """(folder holding config.json or None, how it was found: 'local' / 'builtin' / 'cached' / 'hub')."""
    from gsm8k_grpo import assets

    raw = ctx.cfg.model.path
    p = Path(assets.resolve(raw)).expanduser()
    if p.is_dir():
        return p, "builtin" if raw.startswith(assets.PREFIX) else "local"
    if _looks_local(raw):
        return None, "missing"
    snap = _cached_snapshot(raw)
    return (snap, "cached") if snap else (None, "hub")


def _builtin_config_for(repo_id: str) -> Path | None:
    """A shipped folder whose config.json came from repo_id (same architecture: good for size estimates)."""
    from gsm8k_grpo import assets

    for d in sorted(assets.ROOT.iterdir()):
        f = d / "config.json"
        if f.is_file():
            try:
                if json.loads(f.read_text()).get("_name_or_path") == repo_id:
                    return f
            except (OSError, ValueError):
                continue
    return None


def _model_config(ctx: _Ctx) -> dict | None:
    d, how = _model_dir(ctx)
    f = d / "config.json" if d is not None else None
    if f is None or not f.exists():
        f = _builtin_config_for(ctx.cfg.model.path) if how == "hub" else None
    if f is None:
        return None
    cfg = json.loads(f.read_text())
    cfg.update(ctx.cfg.model.config_overrides)
    return cfg


def _gpu_split(ctx: _Ctx) -> tuple[list[int], list[int]]:
    """(trainer GPUs, server GPUs): from detect.plan when it ran, else the documented default."""
    p = ctx.placement
    if p is not None:
        try:
            return [int(i) for i in p.trainer_gpus], [int(i) for i in p.server_gpus]
        except (TypeError, ValueError):
            pass
    n = len(ctx.gpus)
    if n == 0:
        return [], []
    if ctx.engine() != "sglang":
        return list(range(n)), []
    if n == 1:
        return [0], [0]
    r = max(1, min(ctx.cfg.rollout.gpus, n - 1))
    return list(range(n - r)), list(range(n - r, n))


# ----------------------------------------------------------------------------- checks


def check_python(ctx: _Ctx) -> Check:
    v = sys.version_info
    ver = f"{v.major}.{v.minor}.{v.micro}"
    if v < (3, 10):
        return Check("python", "fail", f"Python {ver} ({sys.executable}); gsm8k-grpo needs >= 3.10",
                     "use Python 3.10-3.12 in a fresh venv")
    return Check("python", "ok", f"Python {ver} ({sys.executable})")


def check_packages(ctx: _Ctx) -> Check:
    required = {"torch": "2.6", "transformers": "4.51"}
    optional = {"datasets": "2.19", "wandb": "0.17"}
    parts, missing_req, missing_opt, old = [], [], [], []
    for name, floor in {**required, **optional}.items():
        v = _pkg_version(name)
        if v is None:
            (missing_req if name in required else missing_opt).append(name)
            parts.append(f"{name} missing")
            continue
        parts.append(f"{name} {v}")
        if _ver_tuple(v) < _ver_tuple(floor):
            old.append(f"{name}>={floor}")
    detail = ", ".join(parts)
    if missing_req:
        return Check("packages", "fail", detail, f"pip install -e . (missing: {', '.join(missing_req)})")
    if old or missing_opt:
        why = []
        if "datasets" in missing_opt:
            why.append("datasets is needed to read GSM8K from the hub or .parquet")
        if "wandb" in missing_opt:
            why.append("no wandb: W&B logging off")
        fix = f"pip install -U {' '.join(old + missing_opt)}"
        return Check("packages", "warn", detail + ("; " + "; ".join(why) if why else ""), fix)
    return Check("packages", "ok", detail)


def check_sglang(ctx: _Ctx) -> Check:
    sg = _pkg_version("sglang")
    fi = _pkg_version("flashinfer-python", "flashinfer")
    fi_txt = f"flashinfer {fi}" if fi else "flashinfer not installed (SGLang can use --attention-backend triton)"
    gpu_host = ctx.cuda or shutil.which("nvidia-smi") is not None
    wanted = ctx.cfg.rollout.engine
    if sg is None:
        if wanted == "sglang":
            fix = SGLANG_INSTALL if gpu_host else "--set rollout.engine=hf (SGLang needs a GPU)"
            return Check("sglang", "fail", "rollout.engine=sglang but SGLang is not installed", fix)
        if gpu_host:
            return Check("sglang", "warn", f"SGLang not installed: rollouts fall back to the slow HF engine; {fi_txt}",
                         SGLANG_INSTALL)
        return Check("sglang", "ok", "SGLang not installed: not needed on a CPU host (HF engine)")
    detail = f"sglang {sg}, {fi_txt}"
    if not gpu_host:
        if wanted == "sglang":
            return Check("sglang", "fail", detail + "; rollout.engine=sglang but there is no GPU",
                         "--set rollout.engine=hf (or auto) on a CPU host")
        return Check("sglang", "ok", detail + " (unused on a CPU host: HF engine)")
    if not ((0, 5, 17) <= _ver_tuple(sg) < (0, 6)):
        return Check("sglang", "warn", detail + "; tested range is >=0.5.17,<0.6", "pip install 'sglang>=0.5.17,<0.6'")
    return Check("sglang", "ok", detail)


def _nvidia_smi_driver() -> str | None:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [ln.strip() for ln in out.stdout.splitlines() if ln.strip()]
    return lines[0] if out.returncode == 0 and lines else None


def check_cuda(ctx: _Ctx) -> Check:
    _load_torch(ctx)
    if ctx.torch is None:
        return Check("cuda", "fail", f"torch cannot be imported ({ctx.torch_error})", "pip install -e .")
    torch = ctx.torch
    runtime = torch.version.cuda
    ctx.cuda = bool(torch.cuda.is_available())
    smi = _nvidia_smi_driver()
    if not ctx.cuda:
        if smi:
            build = f"torch {torch.__version__} is a CPU build" if runtime is None else f"torch CUDA {runtime}"
            return Check("cuda", "warn", f"nvidia-smi sees a GPU (driver {smi}) but torch cannot use it ({build})",
                         "install a CUDA build of torch matching the driver (or check CUDA_VISIBLE_DEVICES)")
        build = "CPU build" if runtime is None else f"built for CUDA {runtime}"
        return Check("cuda", "ok", f"CUDA not available (torch {torch.__version__}, {build}); GPU checks skipped")
    driver = smi
    src = "nvidia-smi"
    if driver is None:
        try:
            dv = int(torch._C._cuda_getDriverVersion())
            driver, src = f"CUDA {dv // 1000}.{(dv % 1000) // 10}", "torch"
        except Exception:  # noqa: BLE001
            driver, src = "unknown", "torch"
    vis = os.environ.get("CUDA_VISIBLE_DEVICES")
    vis_txt = f", CUDA_VISIBLE_DEVICES={vis}" if vis is not None else ""
    return Check("cuda", "ok", f"torch {torch.__version__}, CUDA runtime {runtime}, driver {driver} (via {src}){vis_txt}")


def check_gpu(ctx: _Ctx) -> Check:
    if ctx.torch is None:
        return Check("gpu", "warn", "no GPU: torch is not importable", "pip install -e .")
    if not ctx.cuda:
        if ctx.cfg.trainer.device == "cuda":
            return Check("gpu", "fail", "no GPU but trainer.device=cuda",
                         "--set trainer.device=auto (CPU here) or run on a CUDA host")
        return Check("gpu", "warn", "no GPU: CPU engine only (HF rollouts, CPU trainer; fine for --preset smoke)",
                     "real runs need a CUDA GPU with bf16 (sm_80+, >= 24 GiB)")
    torch = ctx.torch
    ctx.gpus = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        free = None
        try:
            free, _ = torch.cuda.mem_get_info(i)
        except Exception:  # noqa: BLE001
            pass
        ctx.gpus.append(_Gpu(i, props.name, int(props.total_memory), free, (props.major, props.minor)))
    parts, warns = [], []
    for g in ctx.gpus:
        used = g.total - g.free if g.free is not None else 0
        free_txt = f", {_gib(g.free)} free" if g.free is not None else ""
        parts.append(f"{g.index}: {g.name} {_gib(g.total)}{free_txt}, sm_{g.cc[0]}{g.cc[1]}, "
                     f"bf16 {'yes' if g.bf16 else 'no'}")
        if not g.bf16:
            warns.append(f"GPU {g.index} has no native bf16")
        if g.free is not None and used > max(2 * GiB, 0.1 * g.total):
            warns.append(f"GPU {g.index}: {_gib(used)} already in use by other processes")
    detail = f"{len(ctx.gpus)} GPU(s): " + "; ".join(parts)
    if warns:
        fix = []
        if any("bf16" in w for w in warns):
            fix.append("--set trainer.dtype=fp32 on pre-Ampere GPUs")
        if any("in use" in w for w in warns):
            fix.append("free the GPU or lower rollout.mem_fraction / trainer.micro_batch_tokens")
        return Check("gpu", "warn", detail + " — " + "; ".join(warns), "; ".join(fix))
    return Check("gpu", "ok", detail)


def _nccl_worker(rank: int, world: int, port: int, q, backend: str = "nccl") -> None:
    """Child of the NCCL check: one rank of a 2-GPU all-reduce; reports (rank, ok, value or error).

    backend='gloo' runs the same rendezvous on CPU tensors (the tests use it on GPU-less hosts).
    """
    try:
        from datetime import timedelta

        import torch
        import torch.distributed as dist

        device = "cpu"
        if backend == "nccl":
            torch.cuda.set_device(rank)
            device = f"cuda:{rank}"
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=timedelta(seconds=NCCL_TIMEOUT_S / 2))
        t = torch.full((1024,), float(rank + 1), device=device)
        dist.all_reduce(t)
        if backend == "nccl":
            torch.cuda.synchronize()
        q.put((rank, True, float(t[0].item())))
        dist.destroy_process_group()
    except BaseException as e:  # noqa: BLE001 - the parent turns it into a check result
        q.put((rank, False, _one_line(e)))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _collect(q, n: int, procs: list, timeout: float) -> tuple[list, str | None]:
    """Wait for n results from q; on timeout or a dead child, stop the children this check started."""
    import queue as _queue

    results, deadline, err = [], time.monotonic() + timeout, None
    while len(results) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            err = f"timed out after {timeout:.0f} s"
            break
        try:
            results.append(q.get(timeout=min(1.0, left)))
        except _queue.Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead and q.empty():
                err = f"child process exited with code {dead[0].exitcode}"
                break
    for p in procs:
        p.join(timeout=5 if err is None else 0.5)
        if p.is_alive():
            p.terminate()
            p.join(timeout=2)
        if p.is_alive():
            p.kill()
    return results, err


def _close_queues(*queues) -> None:
    for q in queues:
        q.cancel_join_thread()  # never block interpreter exit on data a dead child did not read
        q.close()


def check_nccl(ctx: _Ctx) -> Check:
    if not ctx.cuda or not ctx.gpus:
        return Check("nccl", "ok", "skipped: no GPU (NCCL only carries weights between GPUs)")
    torch = ctx.torch
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_nccl_available():
        status: Status = "fail" if ctx.cfg.weights.transport == "nccl" else "warn"
        return Check("nccl", status, "this torch build has no NCCL", "use a CUDA build of torch from pytorch.org")
    try:
        ver = ".".join(str(x) for x in torch.cuda.nccl.version())
    except Exception:  # noqa: BLE001
        ver = "unknown"
    wants_nccl = ctx.cfg.weights.transport == "nccl"
    if len(ctx.gpus) < 2:
        if ctx.engine() == "sglang":
            way = "weights go by " + ("CUDA IPC" if ctx.ipc_ok is not False else "disk (CUDA IPC failed)")
        else:
            way = "the HF engine runs in the trainer's process"
        detail = f"NCCL {ver}; 1 GPU: trainer<->server NCCL is impossible ({DUPLICATE_GPU}); {way}"
        if wants_nccl:
            return Check("nccl", "fail", detail, "--set weights.transport=auto (CUDA IPC on one GPU)")
        return Check("nccl", "ok", detail)
    if ctx.quick:
        return Check("nccl", "ok", f"NCCL {ver}; 2-GPU all-reduce skipped (--quick)")
    import torch.multiprocessing as tmp

    mp = tmp.get_context("spawn")
    q = mp.Queue()
    port = _free_port()
    t0 = time.monotonic()
    procs = [mp.Process(target=_nccl_worker, args=(r, 2, port, q), daemon=True) for r in range(2)]
    for p in procs:
        p.start()
    results, err = _collect(q, 2, procs, NCCL_TIMEOUT_S)
    _close_queues(q)
    dt = time.monotonic() - t0
    bad = [r for r in results if not r[1]]
    if err is None and not bad and all(abs(r[2] - 3.0) < 1e-6 for r in results):
        ctx.nccl_ok = True
        return Check("nccl", "ok", f"NCCL {ver}; 2-process all-reduce across GPU 0 and 1 correct ({dt:.1f} s)")
    ctx.nccl_ok = False
    why = bad[0][2] if bad else err or f"wrong all-reduce result {[r[2] for r in results]}"
    status = "fail" if ctx.cfg.weights.transport in ("nccl", "auto") else "warn"
    return Check("nccl", status, f"NCCL {ver}; 2-GPU all-reduce failed: {why}",
                 "rerun with NCCL_DEBUG=INFO; try NCCL_P2P_DISABLE=1, or --set weights.transport=disk")


def _ipc_worker(q_in, q_out) -> None:
    """Child of the IPC check: receive a CUDA tensor from the parent and report its sum."""
    try:
        import torch  # noqa: F401 - registers the CUDA tensor reductions

        t = q_in.get(timeout=IPC_TIMEOUT_S)
        q_out.put((True, float(t.sum().item()), str(t.device)))
        del t
    except BaseException as e:  # noqa: BLE001
        q_out.put((False, _one_line(e), ""))


def check_cuda_ipc(ctx: _Ctx) -> Check:
    if not ctx.cuda or not ctx.gpus:
        return Check("cuda_ipc", "ok", "skipped: no GPU (CUDA IPC weight sync needs one)")
    if ctx.quick:
        return Check("cuda_ipc", "ok", "skipped (--quick)")
    torch = ctx.torch
    import torch.multiprocessing as tmp

    mp = tmp.get_context("spawn")
    q_in, q_out = mp.Queue(), mp.Queue()
    t = torch.arange(4096, dtype=torch.float32, device="cuda:0")
    expected = float(4096 * 4095 / 2)
    t0 = time.monotonic()
    p = mp.Process(target=_ipc_worker, args=(q_in, q_out), daemon=True)
    p.start()
    q_in.put(t)
    results, err = _collect(q_out, 1, [p], IPC_TIMEOUT_S)
    _close_queues(q_in, q_out)
    del t  # kept alive until the child has read it
    dt = time.monotonic() - t0
    if err is None and results and results[0][0] and abs(results[0][1] - expected) < 1e-3:
        ctx.ipc_ok = True
        return Check("cuda_ipc", "ok", f"child process read a CUDA tensor on {results[0][2]} correctly ({dt:.1f} s)")
    ctx.ipc_ok = False
    why = err or (results[0][1] if results and not results[0][0] else f"wrong value {results[0][1] if results else '?'}")
    status: Status = "fail" if ctx.cfg.weights.transport == "ipc" else "warn"
    return Check("cuda_ipc", status, f"CUDA IPC between two processes failed: {why}; auto transport uses disk",
                 "in Docker run with --ipc=host; or --set weights.transport=disk")


def check_shm(ctx: _Ctx) -> Check:
    shm = Path("/dev/shm")
    if not shm.is_dir():
        return Check("shm", "ok", "no /dev/shm on this OS: disk sync writes to RUN_DIR")
    st = os.statvfs(shm)
    size, free = st.f_frsize * st.f_blocks, st.f_frsize * st.f_bavail
    detail = f"/dev/shm {_gib(size)} ({_gib(free)} free)"
    if size < SHM_MIN:
        return Check("shm", "warn", detail + " < 2 GiB",
                     "Docker's 64 MB default breaks disk sync and NCCL: run with --shm-size=16g (or --ipc=host)")
    return Check("shm", "ok", detail)


def check_disk(ctx: _Ctx) -> Check:
    target = ctx.run_dir.expanduser().absolute()
    probe = target
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    where = str(target) if probe == target else f"{target} (on {probe})"
    detail = f"{_gib(free)} free for {where}"
    if not probe.is_dir():  # a regular file on the way: the run dir can never be created
        return Check("disk", "fail", f"{where} is not writable ({probe} is not a directory)",
                     "--set output_dir=DIR with a writable DIR")
    if not os.access(probe, os.W_OK):
        return Check("disk", "fail", f"{where} is not writable", "--set output_dir=DIR with a writable DIR")
    if free < DISK_FAIL:
        return Check("disk", "fail", detail + " < 2 GiB: checkpoints cannot be written",
                     "free space or --set output_dir=DIR on a bigger disk")
    if free < DISK_WARN:
        return Check("disk", "warn", detail + " < 10 GiB: checkpoints may fill it",
                     "free space, --set checkpoint.keep_last=1, or --set output_dir=DIR on a bigger disk")
    return Check("disk", "ok", detail)


def check_port(ctx: _Ctx) -> Check:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
    return Check("port", "ok", f"can bind 127.0.0.1 (e.g. port {port}); runs pick free ports at start")


def check_model(ctx: _Ctx) -> Check:
    raw = ctx.cfg.model.path
    d, how = _model_dir(ctx)
    if how == "missing":
        return Check("model", "fail", f"model.path {raw!r} is not a folder",
                     "--set model.path=DIR (an HF model folder) or a hub id like Qwen/Qwen2.5-0.5B-Instruct")
    if d is not None:
        if not (d / "config.json").exists():
            return Check("model", "fail", f"model.path {raw!r} ({how}) has no config.json",
                         "point model.path to a Hugging Face model folder")
        has_weights = any(d.glob("*.safetensors")) or any(d.glob("*.bin"))
        if not has_weights and not ctx.cfg.model.random_init:
            return Check("model", "fail", f"model.path {raw!r} ({how}) has config but no weights",
                         "--set model.random_init=true, or point model.path to a folder with *.safetensors")
        what = "random init from its config" if ctx.cfg.model.random_init else "weights present"
        return Check("model", "ok", f"{raw} is {'a ' + how + ' folder' if how != 'cached' else 'in the HF cache'} "
                                    f"({what})")
    return _from_hub(ctx, "model", raw, "is neither cached nor local",
                     "--set model.path=DIR with a local model folder (offline use)")


def _from_hub(ctx: _Ctx, name: str, what: str, missing: str, fix: str) -> Check:
    """`what` is not available locally: ok when the hub can be reached (or was not probed), else warn."""
    reachable, words = ctx.hub()
    if reachable or reachable is None:
        return Check(name, "ok", f"{what} not cached; " + ("will download" if reachable else words))
    return Check(name, "warn", f"{what} {missing} and the hub is unreachable ({words})", fix)


def check_data(ctx: _Ctx) -> Check:
    from gsm8k_grpo import assets

    raw = ctx.cfg.data.path
    if raw:
        p = Path(assets.resolve(raw)).expanduser()
        if not p.exists():
            return Check("data", "fail", f"data.path {raw!r} does not exist",
                         "--set data.path=DIR with train/test .jsonl|.parquet (or builtin:gsm8k)")
        if p.is_file():
            return Check("data", "ok", f"{raw} is a local file")
        splits = sorted({f.stem for f in p.iterdir() if f.suffix in (".jsonl", ".parquet")})
        if "train" not in splits:
            return Check("data", "fail", f"data.path {raw!r} has no train.jsonl or train.parquet (found {splits})",
                         "put train.jsonl and test.jsonl (GSM8K fields question/answer) in the folder")
        return Check("data", "ok", f"{raw}: local splits {', '.join(splits)}")
    hub = ctx.cfg.data.hub_name
    ds_cache = Path(os.environ.get("HF_DATASETS_CACHE") or _hf_cache_dir().parent / "datasets").expanduser()
    if _cached_snapshot(hub, "datasets") or (ds_cache / hub.replace("/", "___")).is_dir():
        return Check("data", "ok", f"{hub} in the local HF cache")
    return _from_hub(ctx, "data", hub, "is not cached",
                     "--set data.path=DIR with train/test .jsonl|.parquet (or builtin:gsm8k for a sample)")


def check_wandb(ctx: _Ctx) -> Check:
    # Never print the key or anything derived from it: only where it was found.
    mode = ctx.cfg.logging.wandb
    if mode == "disabled":
        return Check("wandb", "ok", "disabled in config (logging.wandb=disabled)")
    if os.environ.get("WANDB_API_KEY", "").strip():
        where = "found in env (WANDB_API_KEY)"
    else:
        f = Path("wandb") / ".wandb_api_key"
        try:
            found = f.is_file() and bool(f.read_text().strip())
        except OSError:
            found = False
        where = f"found in file ({f})" if found else ""
    if not where:
        return Check("wandb", "ok", "none: W&B logging off",
                     "export WANDB_API_KEY or write it to ./wandb/.wandb_api_key to log to W&B")
    if _pkg_version("wandb") is None:
        return Check("wandb", "warn", f"key {where} but wandb is not installed: W&B logging off", "pip install wandb")
    return Check("wandb", "ok", f"key {where}; logging.wandb={mode}, project {ctx.cfg.logging.project}")


def check_transport(ctx: _Ctx) -> Check:
    try:
        from gsm8k_grpo.weights import detect  # written separately; imported lazily on purpose
        visible, plan = detect.visible_gpus, detect.plan
    except (ImportError, AttributeError) as e:
        return Check("transport", "warn",
                     f"detection unavailable (gsm8k_grpo.weights.detect: {type(e).__name__}); "
                     "`grpo train` decides at start",
                     "reinstall gsm8k-grpo (pip install -e .)")
    gpus = visible()
    c = ctx.cfg
    try:
        p = plan(n_gpus=len(gpus), rollout_gpus=c.rollout.gpus, engine=c.rollout.engine,
                 transport=c.weights.transport, ipc_ok=ctx.ipc_ok is not False)
    except ValueError as e:
        return Check("transport", "fail", f"impossible with {len(gpus)} GPU(s): {e}",
                     "change weights.transport / rollout.engine / rollout.gpus (see docs/troubleshooting.md)")
    ctx.placement = p
    tg, sg = list(p.trainer_gpus), list(p.server_gpus)
    split = f"trainer on {_gpus_txt(tg)}, server on {_gpus_txt(sg)}" if len(gpus) else "all on CPU"
    if len(sg) > 1:
        split += (f" ({len(sg)} SGLang servers, one per GPU)" if c.rollout.parallel == "dp"
                  else f" (one SGLang server, tensor-parallel over {len(sg)} GPUs)")
    return Check("transport", "ok", f"{p.transport}: {split} ({p.reason})")


def _gpus_txt(ids: list) -> str:
    if not ids:
        return "CPU / in-process"
    return ("GPU " if len(ids) == 1 else "GPUs ") + ",".join(str(i) for i in ids)


def check_memory(ctx: _Ctx) -> Check:
    mc = _model_config(ctx)
    if mc is None:
        return Check("memory", "ok", f"estimate skipped: config.json of {ctx.cfg.model.path} is not local or cached")
    params = memory.estimate_params(mc)
    c = ctx.cfg
    on_gpu = ctx.trainer_on_gpu() and bool(ctx.gpus)
    act_b = 4 if (not on_gpu or c.trainer.dtype == "fp32") else 2
    engine = ctx.engine()
    pre = f"{params / 1e6:.0f}M params"
    if not on_gpu:
        cpu = memory.estimate(mc, c, 0, shared=False, bf16=False)
        state, act = cpu.state, cpu.activations
        hf_copy = params * 4 if engine == "hf" else 0
        need = state + act + hf_copy
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        detail = (f"{pre}: CPU trainer ≈ {_gib(need)} (state {_gib(state)} + activations {_gib(act)}"
                  f"{' + HF engine ' + _gib(hf_copy) if hf_copy else ''}) of {_gib(ram)} RAM")
        if params > c.model.max_params_on_cpu and engine == "hf" and not on_gpu:
            return Check("memory", "warn", detail + f"; above model.max_params_on_cpu={c.model.max_params_on_cpu}: "
                                                    "the CPU engine refuses it",
                         "use a GPU, --preset smoke, or --set model.max_params_on_cpu=N explicitly")
        if need > 0.8 * ram:
            return Check("memory", "warn", detail + ": too tight",
                         "lower trainer.micro_batch_tokens / trainer.logprob_chunk or set trainer.grad_checkpointing=true")
        return Check("memory", "ok", detail)
    trainer_gpus, server_gpus = _gpu_split(ctx)
    trainer_gpus = [i for i in trainer_gpus if i < len(ctx.gpus)] or [0]
    server_gpus = [i for i in server_gpus if i < len(ctx.gpus)]
    g = ctx.gpus[trainer_gpus[0]]
    shared = engine == "sglang" and trainer_gpus[0] in server_gpus
    bf16 = c.trainer.dtype != "fp32"
    ranks = int(os.environ.get("WORLD_SIZE", 1))  # trainer processes: 1 unless doctor runs under torchrun
    fitted, changes, est = memory.fit(mc, c, g.total, shared, ranks, bf16)
    hf_engine = params * act_b if engine == "hf" else 0
    need = est.total + hf_engine
    budget = g.free if g.free is not None else g.total
    detail = f"{pre}: {memory.describe(est, g.total)}{' + HF engine' if hf_engine else ''} on GPU {g.index}"
    if g.free is not None:
        detail += f" ({_gib(g.free)} free)"
    if changes:
        detail += "; grpo train will set " + ", ".join(changes)
    if not shared and server_gpus:
        sg = ctx.gpus[server_gpus[0]]
        detail += f"; SGLang on GPU {sg.index} takes {_gib(fitted.rollout.mem_fraction * sg.total)}"
        if sg.free is not None and fitted.rollout.mem_fraction * sg.total > sg.free:
            return Check("memory", "warn", detail + f" but only {_gib(sg.free)} is free there",
                         "free that GPU or lower rollout.mem_fraction")
    if need > 0.95 * budget:
        return Check("memory", "warn", detail + ": likely OOM",
                     "lower rollout.mem_fraction / trainer.micro_batch_tokens, set trainer.grad_checkpointing=true, "
                     "or rollout.enable_memory_saver=true")
    return Check("memory", "ok", detail)


# order matters: later checks read facts (torch, GPUs, IPC result, placement) found by earlier ones
CHECKS: list[tuple[str, Callable[[_Ctx], Check]]] = [
    ("python", check_python),
    ("packages", check_packages),
    ("cuda", check_cuda),
    ("gpu", check_gpu),
    ("sglang", check_sglang),
    ("cuda_ipc", check_cuda_ipc),
    ("nccl", check_nccl),
    ("shm", check_shm),
    ("disk", check_disk),
    ("port", check_port),
    ("model", check_model),
    ("data", check_data),
    ("wandb", check_wandb),
    ("transport", check_transport),
    ("memory", check_memory),
]


def run_checks(cfg: RunConfig | None = None, run_dir: Path | None = None, quick: bool = False) -> list[Check]:
    """Run every check (read-only) and return the results in a fixed order; never raises.

    cfg None = the default RunConfig; run_dir None = cfg.run_dir. quick skips the two-process GPU
    checks and the hub probe.
    """
    out: list[Check] = []
    try:
        cfg = cfg if cfg is not None else RunConfig()
        ctx = _Ctx(cfg=cfg, run_dir=Path(run_dir) if run_dir is not None else cfg.run_dir, quick=quick)
    except Exception as e:  # noqa: BLE001
        return [Check("config", "fail", _one_line(e), "fix the config (grpo config show)")]
    for name, fn in CHECKS:
        try:
            out.append(fn(ctx))
        except Exception as e:  # noqa: BLE001 - a check must never take the doctor down
            out.append(Check(name, "fail", f"check crashed: {_one_line(e)}", "see docs/troubleshooting.md"))
    return out


_STYLE = {"ok": "bold green", "warn": "bold yellow", "fail": "bold red"}


def render(checks: list[Check], console) -> None:
    """Print a table (status, check, detail, fix) and a one-line verdict on a rich Console."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title="grpo doctor", show_lines=False, expand=False)
    table.add_column("status", no_wrap=True)
    table.add_column("check", no_wrap=True)
    table.add_column("detail", overflow="fold")
    table.add_column("fix", overflow="fold")
    for c in checks:
        # Text(), not markup: details contain brackets such as gsm8k-grpo[sglang]
        table.add_row(Text(c.status.upper(), style=_STYLE.get(c.status, "")), Text(c.name), Text(c.detail), Text(c.fix))
    console.print(table)
    n = {s: sum(c.status == s for c in checks) for s in ("ok", "warn", "fail")}
    verdict = ("a run can start" if exit_code(checks) == 0 else "fix the failures before a run")
    style = "red" if n["fail"] else ("yellow" if n["warn"] else "green")
    console.print(Text(f"{n['ok']} ok, {n['warn']} warn, {n['fail']} fail: {verdict}", style=style))


def to_json(checks: list[Check]) -> dict:
    return {"ok": not any(c.status == "fail" for c in checks), "checks": [asdict(c) for c in checks]}


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.status == "fail" for c in checks) else 0
