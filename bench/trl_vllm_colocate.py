"""Peer baseline, fast path: TRL GRPOTrainer with vLLM colocate, seconds/step on a random-init
Qwen2.5-0.5B-shaped model.

The model, dataset, reward and timing are those of bench/trl_grpo_baseline.py (imported from it):
the full-size Qwen2.5-0.5B-Instruct architecture with random bf16 weights, GSM8K prompts, the
last-number reward, on_step_begin -> on_step_end with CUDA syncs, the median of the steps after
warm-up. The difference is generation: GRPOConfig(use_vllm=True, vllm_mode="colocate",
vllm_gpu_memory_utilization=..., vllm_enable_sleep_mode=...), TRL's recommended single-GPU fast path
(vLLM in the trainer's process, weights pushed to it in memory before each generation).

Runs: the shapes S = 8 prompts x 2 samples x 256 new tokens and L = 8 x 8 x 512, 7 steps, the first
2 dropped (median of 5), times --precision (fp32: TRL's default fp32 policy under bf16 autocast;
bf16: model_init_kwargs dtype=bfloat16) times --sleep (vllm_enable_sleep_mode off/on).
Each run is a child process with a time limit (vLLM can be built once per process): a run that
hangs is stopped with its Python stacks printed, and the next run goes on. A run that runs out of
GPU memory is repeated with gradient accumulation 2, then 4 (the same B*G per optimizer step), as
the baseline does.

Per step it records the step time, TRL's own profiling timers (vLLM.generate, sync_weights,
_prepare_inputs = generation + rewards + old log-probs; the update is the step less
_prepare_inputs), TRL's logged metrics, torch.cuda.max_memory_allocated/reserved of the process and
the peak GPU memory that nvidia-smi shows while the run is alive (the process's own where nvidia-smi
lists it, else the whole GPU's).

GPU machine, after `source bench/device/vllm_env.sh` (vLLM 0.25.1 + TRL 1.16.0 on torch 2.11):
    python bench/trl_vllm_colocate.py --out $OUT/trl_vllm.json 2>&1 | tee $OUT/trl_vllm.log
Here (CPU): --help, and --check (builds each run's GRPOConfig and prints it; needs trl).
"""
import argparse
import contextlib
import importlib.util
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SHAPES = {"S": dict(B=8, G=2, M=256), "L": dict(B=8, G=8, M=512)}
OOM_EXIT = 3
T_START = time.perf_counter()


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}] [trl-vllm]", *a, flush=True)


def first_existing(paths):
    for p in paths:
        if p and os.path.exists(p):
            return p
    return paths[0]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "/tmp/out"), "trl_vllm.json"),
                    help="result JSON, rewritten after each run (default: $OUT/trl_vllm.json)")
    ap.add_argument("--shapes", nargs="+", default=["S", "L"], choices=sorted(SHAPES),
                    help="S = 8x2x256, L = 8x8x512 (default: S L)")
    ap.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"],
                    help="fp32: TRL's default (fp32 policy, bf16 autocast); bf16: bf16 parameters "
                         "(default: fp32)")
    ap.add_argument("--sleep", nargs="+", default=["off"], choices=["off", "on"],
                    help="vllm_enable_sleep_mode off / on (default: off)")
    ap.add_argument("--steps", type=int, default=7, help="optimizer steps per run (default 7)")
    ap.add_argument("--warmup", type=int, default=2, help="first steps left out of the median (default 2)")
    ap.add_argument("--gpu-mem", type=float, default=0.3,
                    help="vllm_gpu_memory_utilization: vLLM's share of the whole GPU "
                         "(default 0.3, TRL's default)")
    ap.add_argument("--max-model-len", type=int, default=None,
                    help="vllm_max_model_length (default: TRL's, None = the model config's 32768)")
    ap.add_argument("--budget-s", type=float, default=float(os.environ.get("TRL_VLLM_BUDGET_S", 510)),
                    help="start no run after this many seconds, and cut each run's limit to what is left "
                         "(default 510: one device call is 600 s, and vllm_env.sh may take ~30 s of it)")
    ap.add_argument("--run-timeout-s", type=float, default=330, help="time limit of one run (default 330)")
    ap.add_argument("--min-run-s", type=float, default=120,
                    help="don't start a run with less than this left of the budget (default 120)")
    ap.add_argument("--model-src", default=os.environ.get("QWEN_CONFIG_DIR") or os.path.join(
                        REPO, "src", "gsm8k_grpo", "assets", "qwen2.5-0.5b-instruct"),
                    help="config + tokenizer of Qwen2.5-0.5B-Instruct (default: the package's assets)")
    ap.add_argument("--data", default=os.environ.get("GSM8K_TRAIN") or first_existing([
                        os.path.join(REPO, ".carry", "gsm8k", "train.jsonl"), "/tmp/carry/gsm8k/train.jsonl",
                        os.path.join(REPO, "..", "shared", "data", "gsm8k", "train.jsonl")]),
                    help="GSM8K train.jsonl (default: .carry/gsm8k, /tmp/carry/gsm8k or "
                         "../shared/data/gsm8k)")
    ap.add_argument("--model-dir", default="/tmp/m_trl_vllm", help="where the random model is written")
    ap.add_argument("--check", action="store_true",
                    help="CPU-safe: build each run's GRPOConfig and print its settings, train nothing")
    ap.add_argument("--child", help=argparse.SUPPRESS)        # JSON run spec (internal)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def runs_of(args):
    runs = []
    for prec, sleep, shape in itertools.product(args.precision, args.sleep, args.shapes):
        name = shape + ("_bf16params" if prec == "bf16" else "") + ("_sleep" if sleep == "on" else "")
        runs.append(dict(name=name, shape=shape, **SHAPES[shape], steps=args.steps, warmup=args.warmup,
                         param_dtype=("bfloat16" if prec == "bf16" else None), sleep=(sleep == "on"),
                         gpu_mem=args.gpu_mem, max_model_len=args.max_model_len))
    return runs


def import_baseline(args):
    """bench/trl_grpo_baseline.py's model, dataset, reward and timer, pointed at our paths."""
    saved = sys.argv
    sys.argv = [saved[0], os.devnull]            # it reads its output path from argv[1] at import
    try:
        sys.path.insert(0, HERE)
        import trl_grpo_baseline as bl
    finally:
        sys.argv = saved
    bl.MODEL_SRC, bl.DATA, bl.MODEL_DIR = args.model_src, args.data, args.model_dir
    return bl


# ------------------------------------------------------------------------------------------------
# child: one run in its own process


def make_config(run, ga, cuda):
    from trl import GRPOConfig

    B, G, M = run["B"], run["G"], run["M"]
    assert (B * G) % ga == 0
    return GRPOConfig(
        output_dir=f"/tmp/grpo_vllm_out_{run['name']}",
        # counts completions: B prompts x G samples (/ga micro-batches)
        per_device_train_batch_size=B * G // ga,
        num_generations=G,
        gradient_accumulation_steps=ga,  # -> steps_per_generation=ga, generation_batch_size=B*G
        num_iterations=1,
        max_completion_length=M,
        temperature=1.0,
        learning_rate=1e-6,
        beta=0.0,
        use_vllm=True,
        vllm_mode="colocate",
        vllm_gpu_memory_utilization=run["gpu_mem"],
        vllm_enable_sleep_mode=run["sleep"],
        vllm_max_model_length=run["max_model_len"],
        vllm_tensor_parallel_size=1,
        bf16=cuda,
        use_cpu=not cuda,
        gradient_checkpointing=False,
        logging_steps=1,
        report_to="none",
        max_steps=run["steps"],
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
        model_init_kwargs=({"dtype": run["param_dtype"]} if run["param_dtype"] else None),
    )


SETTING_KEYS = [
    "per_device_train_batch_size", "num_generations", "gradient_accumulation_steps", "steps_per_generation",
    "generation_batch_size", "num_iterations", "max_completion_length", "temperature", "top_p", "top_k",
    "learning_rate", "beta", "loss_type", "scale_rewards", "epsilon", "bf16", "gradient_checkpointing",
    "use_vllm", "vllm_mode", "vllm_gpu_memory_utilization", "vllm_enable_sleep_mode", "vllm_max_model_length",
    "vllm_tensor_parallel_size", "vllm_model_impl", "vllm_importance_sampling_correction",
    "vllm_importance_sampling_mode", "mask_truncated_completions", "max_steps", "optim", "lr_scheduler_type",
    "warmup_steps", "weight_decay", "max_grad_norm", "pad_to_multiple_of", "disable_dropout",
    "shuffle_dataset", "model_init_kwargs"]


def settings_of(cfg):
    out = {}
    for k in SETTING_KEYS:
        v = getattr(cfg, k, "<absent>")
        out[k] = v if isinstance(v, (int, float, str, bool, type(None))) else str(v)
    return out


def child_main(args):
    run = json.loads(args.child)
    ga = run.get("ga", 1)
    limit = run.get("timeout_s", 300)
    result = {"run": run}

    def write(extra):
        result.update(extra)
        with open(args.child_out, "w") as f:
            json.dump(result, f, indent=1, default=str)

    import faulthandler

    faulthandler.enable()
    faulthandler.register(signal.SIGTERM, all_threads=True)            # the parent's stop prints our stacks
    faulthandler.dump_traceback_later(max(30, limit - 25), exit=False)  # and so does nearing the limit
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")   # what TRL's external_launcher sets anyway
    try:
        import torch
    except Exception as e:
        write({"error": f"torch import failed: {e!r}"})
        return 1
    if not torch.cuda.is_available():
        write({"error": "CUDA is not available: vLLM colocate needs the GPU machine"})
        return 1
    try:
        import vllm  # noqa: F401  (fail here, clearly, rather than inside the trainer)
        from trl import GRPOTrainer
        from trl.extras import profiling
        from trl.generation import vllm_generation
    except Exception as e:
        traceback.print_exc()
        write({"error": f"import failed: {e!r} (did you `source bench/device/vllm_env.sh`?)"})
        return 1
    bl = import_baseline(args)

    # TRL times its phases with ProfilingContext but reports them only to wandb/mlflow/trackio:
    # keep them, per step
    prof_now = []
    orig_log = profiling.ProfilingContext._log_metrics

    def record(self, duration):
        prof_now.append((self.name, duration))
        return orig_log(self, duration)

    profiling.ProfilingContext._log_metrics = record
    vllm_init = {}
    orig_init = vllm_generation.VLLMGeneration._init_vllm

    def timed_init(self, *a, **kw):
        t0 = time.perf_counter()
        try:
            return orig_init(self, *a, **kw)
        finally:
            torch.cuda.synchronize()
            vllm_init["s"] = time.perf_counter() - t0
            free, total = torch.cuda.mem_get_info()
            vllm_init["gpu_used_after_gib"] = (total - free) / 2**30
            vllm_init["allocated_after_gib"] = torch.cuda.memory_allocated() / 2**30
            log(f"vLLM engine up in {vllm_init['s']:.1f}s; "
                f"GPU used {vllm_init['gpu_used_after_gib']:.1f} GiB")

    vllm_generation.VLLMGeneration._init_vllm = timed_init

    from transformers import TrainerCallback

    class PhaseTimes(TrainerCallback):
        def __init__(self):
            self.steps = []

        def on_step_begin(self, args_, state, control, **kw):
            prof_now.clear()

        def on_step_end(self, args_, state, control, **kw):
            d = {}
            for name, dur in prof_now:
                d.setdefault(name, 0.0)
                d[name] += dur
            self.steps.append(d)
            prof_now.clear()

    B, G, M = run["B"], run["G"], run["M"]
    try:
        ds = bl.build_dataset(max(256, B * run["steps"] * 4))
        cfg = make_config(run, ga, cuda=True)
        settings = settings_of(cfg)
        log(f"run {run['name']}: B={B} G={G} M={M} ga={ga}; settings {settings}")
        timer = bl.make_timer_cb()
        phases = PhaseTimes()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        trainer = GRPOTrainer(model=bl.MODEL_DIR, reward_funcs=bl.last_number_reward, args=cfg,
                              train_dataset=ds, callbacks=[timer, phases])
        t_init = time.perf_counter() - t0
        pdt = next(trainer.model.parameters()).dtype
        log(f"trainer init {t_init:.1f}s (vLLM {vllm_init.get('s', float('nan')):.1f}s), policy dtype {pdt}, "
            f"attn {trainer.model.config._attn_implementation}")
        t0 = time.perf_counter()
        trainer.train()
        t_train = time.perf_counter() - t0
    except torch.OutOfMemoryError as e:
        traceback.print_exc()
        write({"oom": f"OOM with per_device_train_batch_size={B * G // ga}, ga={ga}: {str(e)[:300]}"})
        return OOM_EXIT
    except BaseException as e:
        traceback.print_exc()
        write({"error": repr(e)[:2000], "traceback_tail": traceback.format_exc()[-3000:]})
        return 1

    w = run["warmup"]
    meas, e2e = timer.step_times[w:], timer.end_to_end[w:]
    if not meas:
        write({"error": f"only {len(timer.step_times)} steps ran, {w} are warm-up"})
        return 1
    step_logs = [lg for lg in timer.logs if "completions/mean_length" in lg]
    mean_len_all = [lg["completions/mean_length"] for lg in step_logs]

    def phase(name):
        return [s.get(f"GRPOTrainer.{name}") for s in phases.steps]

    gen, sync, prep = phase("vLLM.generate"), phase("sync_weights"), phase("_prepare_inputs")
    update = [st - p if p is not None else None for st, p in zip(timer.step_times, prep, strict=False)]

    def med(xs):
        xs = [x for x in xs[w:] if x is not None]
        return statistics.median(xs) if xs else None

    import importlib.metadata as md

    info = {k: md.version(k) for k in ("torch", "vllm", "trl", "transformers", "tokenizers", "datasets",
                                       "accelerate", "openai")}
    info.update(device=torch.cuda.get_device_name(0),
                gpu_total_gib=torch.cuda.get_device_properties(0).total_memory / 2**30,
                transformers_path=os.path.dirname(__import__("transformers").__file__),
                flashinfer_importable=importlib.util.find_spec("flashinfer") is not None)
    res = dict(
        info=info, settings=settings, policy_dtype=str(pdt), ga=ga,
        step_times_s=timer.step_times, end_to_end_s=timer.end_to_end, warmup_steps_discarded=w,
        median_s_per_step=statistics.median(meas), min_s_per_step=min(meas), max_s_per_step=max(meas),
        mean_s_per_step=statistics.mean(meas), median_end_to_end_s=statistics.median(e2e),
        median_generate_s=med(gen), median_sync_weights_s=med(sync), median_prepare_inputs_s=med(prep),
        median_update_s=med(update),
        per_step_generate_s=gen, per_step_sync_weights_s=sync, per_step_prepare_inputs_s=prep,
        per_step_update_s=update, per_step_trl_timers=phases.steps,
        completions_per_step=B * G,
        mean_completion_length=(statistics.mean(mean_len_all) if mean_len_all else None),
        per_step_mean_completion_length=mean_len_all,
        clipped_ratio=[lg.get("completions/clipped_ratio") for lg in step_logs],
        trl_step_time_metric=[lg.get("step_time") for lg in step_logs],
        trainer_init_s=t_init, vllm_init_s=vllm_init.get("s"),
        gpu_used_after_vllm_init_gib=vllm_init.get("gpu_used_after_gib"),
        train_total_s=t_train,
        peak_mem_allocated_gib=torch.cuda.max_memory_allocated() / 2**30,
        peak_mem_reserved_gib=torch.cuda.max_memory_reserved() / 2**30,
        last_log=step_logs[-1] if step_logs else None,
    )
    write(res)
    log(f"RESULT {run['name']}: median {res['median_s_per_step']:.3f} s/step "
        f"(min {res['min_s_per_step']:.3f}, max {res['max_s_per_step']:.3f}) over {len(meas)} steps "
        f"after {w} warm-up; generate "
        f"{res['median_generate_s'] and round(res['median_generate_s'], 3)}, "
        f"update {res['median_update_s'] and round(res['median_update_s'], 3)}; mean completion len "
        f"{res['mean_completion_length']}; peak alloc {res['peak_mem_allocated_gib']:.1f} GiB")
    faulthandler.cancel_dump_traceback_later()
    # vLLM's engine and process group can hold the interpreter at exit; the result is written
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# ------------------------------------------------------------------------------------------------
# parent


class SmiSampler:
    """Peak GPU memory from nvidia-smi while a child runs: its process group's own, and the GPU's."""

    def __init__(self, pgid, period=1.0):
        self.pgid, self.period = pgid, period
        self.peak_proc_mib = None
        self.peak_gpu_mib = None
        self.samples = 0
        self.err = None
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def query(*q):
        out = subprocess.run(["nvidia-smi", *q, "--format=csv,noheader,nounits"], capture_output=True,
                             text=True, timeout=15)
        return [ln.split(", ") for ln in out.stdout.strip().splitlines() if ln.strip()]

    def _loop(self):
        while not self._stop.wait(self.period):
            try:
                gpu = self.query("--query-gpu=memory.used")
                if gpu:
                    v = float(gpu[0][0])
                    self.peak_gpu_mib = max(self.peak_gpu_mib or 0, v)
                mine = 0.0
                for row in self.query("--query-compute-apps=pid,used_memory"):
                    with contextlib.suppress(Exception):
                        if os.getpgid(int(row[0])) == self.pgid:
                            mine += float(row[1])
                if mine:
                    self.peak_proc_mib = max(self.peak_proc_mib or 0, mine)
                self.samples += 1
            except Exception as e:  # no nvidia-smi, or it timed out: keep what we have
                self.err = repr(e)[:200]

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(timeout=20)


def gpu_used_now_mib():
    with contextlib.suppress(Exception):
        return float(SmiSampler.query("--query-gpu=memory.used")[0][0])
    return None


def spawn(args, run, ga, timeout_s):
    spec = dict(run, ga=ga, timeout_s=timeout_s)
    fd, tmp = tempfile.mkstemp(prefix=f"trl_vllm_{run['name']}_", suffix=".json")
    os.close(fd)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec), "--child-out", tmp,
           "--model-src", args.model_src, "--data", args.data, "--model-dir", args.model_dir]
    idle = gpu_used_now_mib()
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, start_new_session=True)
    timed_out = False
    with SmiSampler(p.pid) as smi:
        try:
            rc = p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            log(f"run {run['name']} (ga={ga}) passed its {timeout_s:.0f}s limit: "
                "stopping it (its stacks follow)")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                rc = p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            rc = p.wait()
    # anything the child left in its group (compile workers) goes too
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGKILL)
    wall = time.perf_counter() - t0
    try:
        with open(tmp) as f:
            res = json.load(f)
    except Exception:
        res = {}
    os.unlink(tmp)
    if timed_out:
        res.setdefault("error", f"timed out after {timeout_s:.0f}s (stacks in the log above)")
    elif rc not in (0, OOM_EXIT) and "error" not in res:
        res["error"] = f"child exited with {rc} and wrote no result (killed? see the log above)"
    res.update(child_rc=rc, child_wall_s=wall, gpu_idle_before_mib=idle,
               smi_peak_process_mib=smi.peak_proc_mib, smi_peak_gpu_mib=smi.peak_gpu_mib,
               smi_samples=smi.samples, smi_error=smi.err)
    return res


def versions():
    import importlib.metadata as md

    out = {}
    for k in ("torch", "vllm", "trl", "transformers", "tokenizers", "datasets", "accelerate"):
        try:
            out[k] = md.version(k)
        except md.PackageNotFoundError:
            out[k] = None
    return out


def check_main(args):
    bl = import_baseline(args)
    import torch

    cuda = torch.cuda.is_available()
    for run in runs_of(args):
        cfg = make_config(run, 1, cuda=cuda)
        print(run["name"], json.dumps(settings_of(cfg)))
    ds = bl.build_dataset(4)
    print("dataset:", ds, "| first prompt:", ds[0]["prompt"][0]["content"][:80].replace("\n", " "), "...")
    print("versions:", versions(), "| cuda:", cuda)
    return 0


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    if args.check:
        return check_main(args)
    v = versions()
    log("versions", v)
    missing = [k for k in ("torch", "vllm", "trl", "transformers", "datasets") if not v.get(k)]
    if missing:
        log(f"ERROR: not installed: {', '.join(missing)}. On the GPU machine, source "
            "bench/device/vllm_env.sh first (its parts come from bench/device/vllm_wheels.sh).")
        return 2
    for p, what in ((args.model_src, "--model-src (config + tokenizer)"),
                    (args.data, "--data (GSM8K train.jsonl)")):
        if not os.path.exists(p):
            log(f"ERROR: {what} not found: {p}")
            return 2
    if importlib.util.find_spec("flashinfer") is not None:
        log("WARNING: flashinfer is importable (SGLang's /tmp/site on PYTHONPATH?): vLLM would pick it up. "
            "Source bench/device/vllm_env.sh after bench/device/env.sh, not before.")
    bl = import_baseline(args)
    import torch

    if not torch.cuda.is_available():
        log("ERROR: no CUDA device: vLLM colocate runs on the GPU machine only (here: --help, --check)")
        return 2
    n_params = bl.build_model()
    env = {k: os.environ.get(k) for k in ("PYTHONPATH", "VLLM_USE_FLASHINFER_SAMPLER", "VLLM_NO_USAGE_STATS",
                                          "NCCL_NVLS_ENABLE", "CUDA_HOME")}
    results = {"info": dict(v, n_params=n_params, argv=sys.argv[1:], env=env,
                            flashinfer_importable=importlib.util.find_spec("flashinfer") is not None),
               "runs": {}}
    if os.path.dirname(args.out):
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
    all_ok = True
    for run in runs_of(args):
        errors = []
        for ga in (1, 2, 4):
            left = args.budget_s - (time.perf_counter() - T_START)
            if left < args.min_run_s:
                log(f"skipping {run['name']} (ga={ga}): {left:.0f}s left of the {args.budget_s:.0f}s budget")
                results["runs"][run["name"]] = {"skipped": f"time budget ({left:.0f}s left)",
                                                "oom_retries": errors}
                all_ok = False
                break
            timeout_s = min(args.run_timeout_s, left)
            log(f"run {run['name']} ga={ga}: limit {timeout_s:.0f}s")
            r = spawn(args, run, ga, timeout_s)
            if "oom" in r:
                log(r["oom"])
                errors.append(r["oom"])
                continue
            r["oom_retries"] = errors
            results["runs"][run["name"]] = r
            if "error" in r:
                all_ok = False
                log(f"FAILED {run['name']}: {r['error']}")
            break
        else:
            results["runs"][run["name"]] = {"error": "OOM at all ga", "oom_retries": errors}
            all_ok = False
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1, default=str)
    log("wrote", args.out, f"total {time.perf_counter() - T_START:.0f}s")

    def rnd(x):
        return None if x is None else round(x, 3)

    for k, r in results["runs"].items():
        if "median_s_per_step" in r:
            log(f"SUMMARY {k}: median {r['median_s_per_step']:.3f} (min {r['min_s_per_step']:.3f}, max "
                f"{r['max_s_per_step']:.3f}) s/step; generate {rnd(r['median_generate_s'])}, update "
                f"{rnd(r['median_update_s'])}, sync {rnd(r['median_sync_weights_s'])}; steps "
                f"{[round(x, 3) for x in r['step_times_s']]}; ga={r['ga']} dtype={r['policy_dtype']}; "
                f"init {r['trainer_init_s']:.0f}s (vLLM {rnd(r['vllm_init_s'])}); "
                f"mean_len {r['mean_completion_length']}; peak alloc {r['peak_mem_allocated_gib']:.1f} "
                f"reserved {r['peak_mem_reserved_gib']:.1f} GiB; "
                f"nvidia-smi peak process {r['smi_peak_process_mib']} MiB, GPU {r['smi_peak_gpu_mib']} MiB")
        else:
            log(f"SUMMARY {k}: {r}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    rc = main()
    sys.stdout.flush()
    sys.stderr.flush()
    if "--child" in sys.argv:
        os._exit(rc)   # a child never waits on vLLM's threads or process group at exit
    sys.exit(rc)
