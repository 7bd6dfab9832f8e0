"""Host checks of `grpo doctor`: Python, packages, CUDA, GPUs, SGLang, CUDA IPC, NCCL, /dev/shm, disk, port.

The two-process GPU checks (a real NCCL all-reduce, a CUDA IPC hand-over) run only when GPUs exist
and ``quick`` is False.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from gsm8k_grpo.distributed import free_port
from gsm8k_grpo.doctor.base import Check, Context, Gpu, Status, gib, load_torch, one_line, pkg_version as _pkg_version, ver_tuple

SHM_MIN = 2 * 2**30
DISK_WARN = 10 * 2**30
DISK_FAIL = 2 * 2**30
NCCL_TIMEOUT_S = 60.0
IPC_TIMEOUT_S = 45.0
SGLANG_INSTALL = "pip install 'gsm8k-grpo[sglang]'"
DUPLICATE_GPU = "two ranks on one GPU fail with 'Duplicate GPU detected'"


def check_python(ctx: Context) -> Check:
    v = sys.version_info
    ver = f"{v.major}.{v.minor}.{v.micro}"
    if v < (3, 10):
        return Check("python", "fail", f"Python {ver} ({sys.executable}); gsm8k-grpo needs >= 3.10",
                     "use Python 3.10-3.12 in a fresh venv")
    return Check("python", "ok", f"Python {ver} ({sys.executable})")


def check_packages(ctx: Context) -> Check:
    """Every dependency against the range this package declares: its installed metadata, the one source."""
    from packaging.requirements import Requirement
    from packaging.version import InvalidVersion, Version

    try:
        declared = [Requirement(r) for r in metadata.requires("gsm8k-grpo") or []]
    except metadata.PackageNotFoundError:
        return Check("packages", "warn", "gsm8k-grpo is not installed as a package (running from a source tree?)",
                     "pip install -e .")
    core = [r for r in declared if r.marker is None or r.marker.evaluate({"extra": ""})]  # extras aside
    problems, wanted, shown = [], [], []
    for req in core:
        version = _pkg_version(req.name)
        try:
            inside = version is not None and req.specifier.contains(Version(version), prereleases=True)
        except InvalidVersion:
            inside = True
        if not inside:
            problems.append(f"{req.name} {version or 'missing'} (declared {req.specifier or 'any'})")
            wanted.append(f"'{req.name}{req.specifier}'")
        elif req.name in ("torch", "transformers"):
            shown.append(f"{req.name} {version}")
    if problems:
        return Check("packages", "fail", "outside the declared range: " + ", ".join(problems),
                     f"pip install {' '.join(wanted)}")
    return Check("packages", "ok", f"all {len(core)} dependencies within their declared ranges ({', '.join(shown)})")


def check_sglang(ctx: Context) -> Check:
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
    if not ((0, 5, 17) <= ver_tuple(sg) < (0, 6)):
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


def check_cuda(ctx: Context) -> Check:
    load_torch(ctx)
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


def check_gpu(ctx: Context) -> Check:
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
        ctx.gpus.append(Gpu(i, props.name, int(props.total_memory), free, (props.major, props.minor)))
    parts, warns = [], []
    for g in ctx.gpus:
        used = g.total - g.free if g.free is not None else 0
        free_txt = f", {gib(g.free)} free" if g.free is not None else ""
        parts.append(f"{g.index}: {g.name} {gib(g.total)}{free_txt}, sm_{g.cc[0]}{g.cc[1]}, "
                     f"bf16 {'yes' if g.bf16 else 'no'}")
        if not g.bf16:
            warns.append(f"GPU {g.index} has no native bf16")
        if g.free is not None and used > max(2 * 2**30, 0.1 * g.total):
            warns.append(f"GPU {g.index}: {gib(used)} already in use by other processes")
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
        q.put((rank, False, one_line(e)))


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


def check_nccl(ctx: Context) -> Check:
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
    port = free_port()
    t0 = time.monotonic()
    procs = [mp.Process(target=_nccl_worker, args=(r, 2, port, q), daemon=True) for r in range(2)]
    for p in procs:
        p.start()
    results, err = _collect(q, 2, procs, NCCL_TIMEOUT_S)
    _close_queues(q)
    dt = time.monotonic() - t0
    bad = [r for r in results if not r[1]]
    if err is None and not bad and all(abs(r[2] - 3.0) < 1e-6 for r in results):
        return Check("nccl", "ok", f"NCCL {ver}; 2-process all-reduce across GPU 0 and 1 correct ({dt:.1f} s)")
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
        q_out.put((False, one_line(e), ""))


def check_cuda_ipc(ctx: Context) -> Check:
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


def check_shm(ctx: Context) -> Check:
    shm = Path("/dev/shm")
    if not shm.is_dir():
        return Check("shm", "ok", "no /dev/shm on this OS: disk sync writes to RUN_DIR")
    st = os.statvfs(shm)
    size, free = st.f_frsize * st.f_blocks, st.f_frsize * st.f_bavail
    detail = f"/dev/shm {gib(size)} ({gib(free)} free)"
    if size < SHM_MIN:
        return Check("shm", "warn", detail + " < 2 GiB",
                     "Docker's 64 MB default breaks disk sync and NCCL: run with --shm-size=16g (or --ipc=host)")
    return Check("shm", "ok", detail)


def check_disk(ctx: Context) -> Check:
    target = ctx.run_dir.expanduser().absolute()
    probe = target
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    where = str(target) if probe == target else f"{target} (on {probe})"
    detail = f"{gib(free)} free for {where}"
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


def check_port(ctx: Context) -> Check:
    port = free_port()
    return Check("port", "ok", f"can bind 127.0.0.1 (e.g. port {port}); runs pick free ports at start")


