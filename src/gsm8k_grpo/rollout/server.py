"""Start, watch and stop an SGLang server child process.

``SGLangServer`` launches ``python -m sglang.launch_server`` on a free 127.0.0.1 port in its
own process group (so SGLang's scheduler/detokenizer children go with it), logs to a file,
waits for ``GET /health`` == 200, and kills the whole group on ``stop()``. Every live server
is also in a module registry that an atexit hook and a SIGTERM handler clean up, so an
interrupted run (Ctrl-C, ``kill``) leaves no GPU-holding orphan behind. A SIGKILLed parent
can still orphan the server; it then sits in its own process group (pgid == its pid, logged).
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from gsm8k_grpo.distributed import child_env, free_port
from gsm8k_grpo.rollout.base import EngineError, EngineUnavailable

NOT_INSTALLED = (
    "SGLang is not installed: pip install 'gsm8k-grpo[sglang]' (GPU hosts), or set rollout.engine=hf"
)


TAIL_LINES = 40


def _die_with(parent: int):
    """preexec_fn for the server child (Linux): SIGKILL it when its parent dies, so even a `kill -9`
    of grpo (or an NCCL watchdog abort) leaves no server holding the GPU; the atexit/SIGTERM cleanup
    covers the orderly exits. The signal follows the spawning *thread*, and the server is spawned
    from the thread that runs the recipe. SGLang's own subprocesses die with the server."""
    if not sys.platform.startswith("linux"):
        return None

    def arm() -> None:
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:  # the parent died before the prctl
            os._exit(1)
    return arm

_LIVE: set[SGLangServer] = set()
_LIVE_LOCK = threading.RLock()  # the SIGTERM handler may run while the main thread holds it
_HOOKS_INSTALLED = False


def log_tail(path: Path, lines: int = TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def sglang_installed(python: str) -> bool:
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        return importlib.util.find_spec("sglang") is not None
    code = "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('sglang') else 1)"
    try:
        return subprocess.run([python, "-c", code], check=False, capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def stop_all() -> None:
    """Stop every live server of this process (atexit, SIGTERM handlers; safe to call twice)."""
    with _LIVE_LOCK:
        servers = list(_LIVE)
    for s in servers:
        s.stop(grace_s=5.0)


class Terminated(SystemExit):
    """SIGTERM arrived (a scheduler, `timeout`, `kill`): the servers are stopped and the program
    unwinds like on Ctrl-C, with exit code 128 + 15; `grpo` turns it into one line."""


def on_sigterm(signum, frame) -> None:
    """The SIGTERM handler: `grpo train` installs it up front, anything else when a server starts."""
    stop_all()  # first: the servers must go even if the unwinding stalls
    raise Terminated(128 + signum)


def _install_hooks() -> None:
    """atexit always; a SIGTERM handler only in the main thread and only over the default one."""
    global _HOOKS_INSTALLED
    if _HOOKS_INSTALLED:
        return
    _HOOKS_INSTALLED = True
    atexit.register(stop_all)
    # SIGINT already raises KeyboardInterrupt, which unwinds through stop()/atexit.
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, on_sigterm)


def _child_cuda_devices(gpu_ids: list[int]) -> str:
    """Map our visible indices to the child's CUDA_VISIBLE_DEVICES (honouring ours, if set)."""
    parent = os.environ.get("CUDA_VISIBLE_DEVICES")
    if parent is None or not parent.strip():
        return ",".join(str(i) for i in gpu_ids)
    visible = [d.strip() for d in parent.split(",") if d.strip()]
    try:
        return ",".join(visible[i] for i in gpu_ids)
    except IndexError:
        raise EngineError(f"rollout GPUs {gpu_ids} are not among CUDA_VISIBLE_DEVICES={parent}") from None


class SGLangServer:
    """One ``sglang.launch_server`` child. ``launch_cmd`` replaces the launcher (tests: a stand-in);
    the command run is ``launch_cmd + ['--port', P] + extra_args``."""

    def __init__(
        self,
        model_path: str,
        *,
        mem_fraction: float,
        extra_args: list[str],
        log_path: Path,
        timeout_s: float,
        gpu_ids: list[int] | None = None,
        enable_memory_saver: bool = False,
        dtype: str | None = None,
        python: str = sys.executable,
        launch_cmd: list[str] | None = None,
        stop_grace_s: float = 30.0,
    ):
        self.model_path = model_path
        self.mem_fraction = mem_fraction
        self.extra_args = list(extra_args)
        self.log_path = Path(log_path)
        self.timeout_s = timeout_s
        self.gpu_ids = gpu_ids
        self.enable_memory_saver = enable_memory_saver
        self.dtype = dtype
        self.python = python
        self.launch_cmd = launch_cmd
        self.stop_grace_s = stop_grace_s
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None  # launch to healthy, port retries included
        self._lock = threading.RLock()  # stop() may re-enter from the SIGTERM handler

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise EngineError("SGLang server is not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def command(self, port: int) -> list[str]:
        if self.launch_cmd is not None:
            base = list(self.launch_cmd)
        else:
            base = [self.python, "-m", "sglang.launch_server", "--model-path", self.model_path,
                    "--host", "127.0.0.1", "--skip-tokenizer-init", "--mem-fraction-static", str(self.mem_fraction)]
            if self.enable_memory_saver:
                base.append("--enable-memory-saver")
            if self.dtype:
                base += ["--dtype", self.dtype]
        return base + ["--port", str(port)] + self.extra_args

    def _env(self) -> dict[str, str]:
        env = child_env()
        if self.gpu_ids is not None:
            env["CUDA_VISIBLE_DEVICES"] = _child_cuda_devices(self.gpu_ids)
        return env

    def start(self) -> SGLangServer:
        self.launch()
        return self.wait_until_healthy()

    def launch(self) -> None:
        """Spawn the child without waiting. Call it from a thread that outlives the server: the
        child's parent-death signal fires when the spawning *thread* exits."""
        if self.proc is not None:
            raise EngineError("SGLang server already started")
        if self.launch_cmd is None and not sglang_installed(self.python):
            raise EngineUnavailable(NOT_INSTALLED)
        _install_hooks()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._t0 = time.monotonic()
        self._spawn(free_port())

    def wait_until_healthy(self) -> SGLangServer:
        attempts = 2  # a free port can be taken between our probe and the child's bind: respawn
        while True:
            try:
                self._wait_healthy()
                self.startup_s = time.monotonic() - self._t0
                return self
            except BaseException as e:
                port_taken = "address already in use" in log_tail(self.log_path).lower()
                self.stop()
                if not (isinstance(e, EngineError) and port_taken and attempts > 0):
                    raise
                attempts -= 1
                self._spawn(free_port())

    def _spawn(self, port: int) -> None:
        self.port = port
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} launching: {' '.join(self.command(port))}\n".encode())
            log.flush()
            with _LIVE_LOCK:
                self.proc = subprocess.Popen(
                    self.command(port), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    env=self._env(), start_new_session=True, preexec_fn=_die_with(os.getpid()),
                )
                _LIVE.add(self)

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        url = f"{self.base_url}/health"
        with requests.Session() as http:
            while True:
                self.check_alive("during startup")
                try:
                    if http.get(url, timeout=5).status_code == 200:
                        return
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    raise EngineError(
                        f"SGLang server not healthy after {self.timeout_s:.0f}s (raise rollout.server_timeout_s?); "
                        f"log {self.log_path}, last lines:\n{log_tail(self.log_path)}"
                    )
                time.sleep(0.25)

    def check_alive(self, when: str = "", wait_s: float = 0.0) -> None:
        """Raise EngineError (with the log tail) if the child has exited (or exits within wait_s)."""
        proc = self.proc
        if proc is None:
            raise EngineError("SGLang server is not running")
        try:
            code = proc.wait(timeout=wait_s) if wait_s > 0 else proc.poll()
        except subprocess.TimeoutExpired:
            code = None
        if code is not None:
            where = f" {when}" if when else ""
            raise EngineError(
                f"SGLang server exited with code {code}{where}; log {self.log_path}, last lines:\n"
                f"{log_tail(self.log_path)}"
            )

    def stop(self, grace_s: float | None = None) -> None:
        """SIGTERM the process group, SIGKILL after the grace period, reap. Idempotent."""
        with self._lock:
            proc = self.proc
            if proc is None:
                return
            grace = self.stop_grace_s if grace_s is None else grace_s
            pgid = proc.pid  # start_new_session: the child leads its own group
            if proc.poll() is None:
                _signal_group(pgid, signal.SIGTERM)
                try:
                    proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    _signal_group(pgid, signal.SIGKILL)
                    proc.wait()
            _signal_group(pgid, signal.SIGKILL)  # stragglers of the group, if any
            self.proc = None
            with _LIVE_LOCK:
                _LIVE.discard(self)

    def __enter__(self) -> SGLangServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
