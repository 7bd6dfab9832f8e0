"""Where the update phase's time goes (issue 6): Trainer.update alone, no SGLang, synthetic samples.

    python bench/profile_update.py --out DIR [--config bench/configs/random-0.5b.yaml] [--steps 7]

For each shape (S = 8 prompts x 2 samples x 256 tokens, L = 8 x 8 x 512; 120-token prompts, every
completion full length as with random weights) and each variant it runs `steps` updates and reports
the median over the steps after the first 2 (warm-up):
    time_update   the whole Trainer.update call (old log-probs reused, as the presets run)
    time_optim    optimizer.step() alone (CUDA-synchronised around it)
    time_clip     grad-norm + clip
    fwd_bwd       the rest: forward + backward of the micro-batches
    mfu           6 * params * tokens / time_update / peak (the recipe's definition)
Variants: base (the defaults: foreach AdamW, the ChunkLogprob head), fused (torch's fused AdamW
swapped in here, the bench's seam: not a setting), micro32k (micro_batch_tokens 32768: fewer,
larger micro-batches), compile (trainer.compile=true: each decoder layer's forward through
torch.compile; its first steps include compile time, and a new micro-batch shape can recompile,
so compare min and median), nofsdp (the bench's seam, not a setting: no FSDP2 wrapping, the fp32 model
under torch.autocast(bf16), as TRL runs its policy; on one GPU FSDP2's per-layer hooks are pure
overhead, and session 10 measured our S update at 3.2x TRL's), fusedhead (the bench's seam, not a
setting: bench/fused_head.py's log-prob head, fp32-output matmul and one fused gradient kernel). Then torch.profiler tables of the top ops at L for base, by
device time and by self CPU time (DIR/profile_L.txt). Writes DIR/profile_update.json.
With --sync-debug (CUDA) the last timed update of each run goes under torch's sync debug mode, and
`syncs` counts its warnings: how often the host waited for the device in one update (issue 21).
On a CPU (for testing the script) pass --tiny: the smoke preset's 2-layer model, small shapes (syncs null).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from gsm8k_grpo.config import build_config
from gsm8k_grpo.modeling import materialize
from gsm8k_grpo.trainer.batching import TrainSample
from gsm8k_grpo.distributed import init_distributed
from gsm8k_grpo.trainer.recipe import peak_bf16_flops
from gsm8k_grpo.trainer.update import Trainer

SHAPES = {"S": (8, 2, 256), "L": (8, 8, 512)}
TINY_SHAPES = {"S": (2, 2, 16), "L": (4, 2, 32)}
VARIANTS = {"base": {}, "fused": {"bench.fused_adamw": True}, "micro32k": {"trainer.micro_batch_tokens": 32768},
            "compile": {"trainer.compile": True}, "nofsdp": {"bench.nofsdp": True},
            "fusedhead": {"bench.fused_head": True}}


def samples(b: int, g: int, new: int, prompt: int, vocab: int) -> list[TrainSample]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for i in range(b * g):
        p = torch.randint(100, vocab - 100, (prompt,), generator=gen).tolist()
        c = torch.randint(100, vocab - 100, (new,), generator=gen).tolist()
        out.append(TrainSample(p, c, 1.0 if i % 2 else -1.0, [0.0] * new))
    return out


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn, dev, box: list):
    """Wrap fn so each call's synchronised wall time is appended to box."""
    def wrapper(*a, **k):
        sync(dev)
        t = time.perf_counter()
        r = fn(*a, **k)
        sync(dev)
        box.append(time.perf_counter() - t)
        return r
    return wrapper


@contextmanager
def counting_syncs(box: list):
    """Append to box how often the host waited for the GPU inside the block (torch's sync debug mode
    warns at each wait, backward's included)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")
    box.append(sum("called a synchronizing" in str(w.message) for w in caught))


def use_fused_adamw(tr: Trainer) -> None:
    """Swap in torch's fused AdamW (one kernel for all parameters), same hyperparameters and schedule."""
    o = tr.cfg.optimizer
    tr.optimizer = torch.optim.AdamW(tr.model.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                     weight_decay=o.weight_decay, fused=True)
    tr.scheduler = torch.optim.lr_scheduler.LambdaLR(tr.optimizer, tr.scheduler.lr_lambdas[0])


def use_fused_head():
    """fusedhead: bench/fused_head.py's FusedChunkLogprob under head_logprobs; -> a function that undoes it."""
    import gsm8k_grpo.logprobs as lp
    from fused_head import FusedChunkLogprob  # beside this script

    old, lp.ChunkLogprob = lp.ChunkLogprob, FusedChunkLogprob
    return lambda: setattr(lp, "ChunkLogprob", old)


def plain_autocast(model, compute_dtype):
    """nofsdp: instead of fsdp.wrap, the model as it is (fp32) with its forward under bf16 autocast."""
    if compute_dtype == torch.float32:
        return model
    forward = model.forward

    def autocast_forward(*a, **k):
        with torch.autocast(next(model.parameters()).device.type, dtype=compute_dtype):
            return forward(*a, **k)

    model.forward = autocast_forward
    return model


def run_variant(cfg, model_dir, dev, shape, steps, prompt, peak, fused: bool = False, nofsdp: bool = False,
                sync_debug: bool = False) -> dict:
    import gsm8k_grpo.trainer.update as update_mod

    b, g, new = shape
    cfg = cfg.model_copy(deep=True)
    cfg.trainer.batch_size, cfg.rollout.n = b, g
    wrap = update_mod.wrap
    if nofsdp:
        update_mod.wrap = plain_autocast
    try:
        tr = Trainer(cfg, model_dir, dev, total_steps=steps, pad_id=0)
    finally:
        update_mod.wrap = wrap
    if fused:
        use_fused_adamw(tr)
    n_params = sum(p.numel() for p in tr.model.parameters())
    optim_t, clip_t = [], []
    tr.optimizer.step = timed(tr.optimizer.step, dev, optim_t)
    clip_orig = torch.nn.utils.clip_grads_with_norm_
    torch.nn.utils.clip_grads_with_norm_ = timed(clip_orig, dev, clip_t)
    data = samples(b, g, new, prompt, tr.hf_config.vocab_size)
    rows, syncs = [], []
    try:
        for step in range(steps):
            sync(dev)
            t = time.perf_counter()
            count = sync_debug and dev.type == "cuda" and step == steps - 1  # the mode is CUDA's alone
            with counting_syncs(syncs) if count else nullcontext():
                st = tr.update(data)
            sync(dev)
            rows.append({"time_update": time.perf_counter() - t, "seq_tokens": st.seq_tokens,
                         "optimizer_steps": st.optimizer_steps, "grad_norm": st.grad_norm})
    finally:
        torch.nn.utils.clip_grads_with_norm_ = clip_orig
    for r, o, c in zip(rows, optim_t, clip_t):
        r.update(time_optim=o, time_clip=c, fwd_bwd=r["time_update"] - o - c)
    keep = rows[2:] or rows
    med = {k: statistics.median(r[k] for r in keep) for k in ("time_update", "time_optim", "time_clip", "fwd_bwd")}
    med["min_update"], med["max_update"] = min(r["time_update"] for r in keep), max(r["time_update"] for r in keep)
    med["seq_tokens"] = keep[0]["seq_tokens"]
    med["syncs"] = syncs[0] if syncs else None
    med["mfu"] = 6 * n_params * med["seq_tokens"] / med["time_update"] / peak if peak else None
    med["all_steps_trained"] = all(r["optimizer_steps"] == 1 and r["grad_norm"] > 0 for r in rows)
    med["peak_mem_gb"] = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
    del tr
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    return med


def profile(cfg, model_dir, dev, shape, prompt, out: Path) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof_ctx

    b, g, new = shape
    cfg = cfg.model_copy(deep=True)
    cfg.trainer.batch_size, cfg.rollout.n = b, g
    tr = Trainer(cfg, model_dir, dev, total_steps=4, pad_id=0)
    data = samples(b, g, new, prompt, tr.hf_config.vocab_size)
    tr.update(data)  # warm-up
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with prof_ctx(activities=acts) as p:
        tr.update(data)
        sync(dev)
    key = "cuda_time_total" if dev.type == "cuda" else "cpu_time_total"
    avg = p.key_averages()
    # the second table: where the host's time goes. Its total includes time blocked in device syncs
    # (cudaStreamSynchronize, aten::_local_scalar_dense), which is GPU-bound waiting, not launch cost
    out.write_text(avg.table(sort_by=key, row_limit=30) + "\n\nBy self CPU time:\n"
                   + avg.table(sort_by="self_cpu_time_total", row_limit=25))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="bench/configs/random-0.5b.yaml")
    ap.add_argument("--workdir", default="/tmp/profile-update")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--prompt-tokens", type=int, default=120)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--tiny", action="store_true", help="CPU check: a 2-layer model and small shapes")
    ap.add_argument("--sync-debug", action="store_true",
                    help="count the host-device syncs of each run's last update (CUDA only)")
    args = ap.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = build_config(preset="smoke") if args.tiny else build_config(config_file=args.config)
    model_dir = materialize(cfg.model, Path(args.workdir) / ("tiny-model" if args.tiny else "model"))
    dev = torch.device("cuda", 0) if torch.cuda.is_available() and not args.tiny else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    init_distributed(dev)
    shapes = TINY_SHAPES if args.tiny else SHAPES
    prompt = 8 if args.tiny else args.prompt_tokens
    peak = peak_bf16_flops(dev)
    result = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
              "torch": torch.__version__, "config": "preset smoke" if args.tiny else args.config, "prompt_tokens": prompt, "runs": []}
    for name in args.variants.split(","):
        for shape_name, shape in shapes.items():
            vcfg = cfg.model_copy(deep=True)
            for key, val in VARIANTS[name].items():
                sect, field = key.split(".")
                if sect != "bench":
                    setattr(getattr(vcfg, sect), field, val)
            undo = use_fused_head() if VARIANTS[name].get("bench.fused_head") else None
            try:
                med = run_variant(vcfg, model_dir, dev, shape, args.steps, prompt, peak,
                                  fused=VARIANTS[name].get("bench.fused_adamw", False),
                                  nofsdp=VARIANTS[name].get("bench.nofsdp", False), sync_debug=args.sync_debug)
            finally:
                if undo:
                    undo()
            med.update(variant=name, shape=shape_name, b=shape[0], g=shape[1], new_tokens=shape[2])
            result["runs"].append(med)
            mfu = f"{med['mfu']:.1%}" if med["mfu"] else "-"
            syncs = f"  syncs {med['syncs']}" if med["syncs"] is not None else ""
            print(f"[{name:8s} {shape_name}] update {med['time_update']:.3f}s ({med['min_update']:.3f}-"
                  f"{med['max_update']:.3f}) optim {med['time_optim']:.3f}s clip {med['time_clip']:.3f}s "
                  f"fwd+bwd {med['fwd_bwd']:.3f}s  MFU {mfu}  trained every step: {med['all_steps_trained']}"
                  f"{syncs}",
                  flush=True)
            (out / "profile_update.json").write_text(json.dumps(result, indent=1))
    profile(cfg, model_dir, dev, shapes["L"], prompt, out / "profile_L.txt")
    print(f"wrote {out / 'profile_update.json'} and {out / 'profile_L.txt'}")


if __name__ == "__main__":
    main()
