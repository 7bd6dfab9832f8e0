"""Issue 22: SGLang's own LoRA path vs pushing merged weights, on one GPU.

Builds a rank-16 LoRA adapter (peft, alpha 32, q/k/v/o/gate/up/down, random nonzero B) on --model,
saves it in peft's layout and also saves the merged model (merge_and_unload), then, one server at a
time (each in its own process group, always stopped):

  A  plain SGLang on the MERGED model dir (what our training serves after a merged-weights push)
  B  SGLang on the BASE model with --enable-lora; the adapter loaded at runtime (/load_lora_adapter)
     and selected per request with "lora_path": <adapter name>

and measures
  generate   the `1hour` batch (8 GSM8K prompts x 8 samples, T=1, 512 new tokens, token ids in),
             median of --repeats after --warmup, natural length and fixed length (ignore_eos);
  update     A: None (our CUDA-IPC push of merged weights is measured elsewhere, ~0.03-0.07 s);
             B: /unload_lora_adapter + /load_lora_adapter from disk (median of --repeats), the
             first request after a load (adapter H2D), the adapter's save_pretrained time, and
             /unload + /load_lora_adapter_from_tensors (CUDA IPC, flattened bucket);
  correct    greedy (T=0) outputs for --greedy-prompts prompts, 128 new tokens: A (merged) vs B
             (base + adapter): identical fraction and mean common prefix; plus A vs A (repeat:
             the noise floor of batched greedy decoding), B base vs B adapter (the adapter must
             change outputs) and B disk-loaded vs B tensor-loaded adapter.

Results go to --out/sglang_lora.json (rewritten after every part, so a timeout keeps what was done);
server logs and the adapter/merged dirs go under --out (or --workdir). --budget-s skips the later
parts when time runs out. --help needs neither torch nor SGLang.

    source bench/device/env.sh
    python bench/sglang_lora.py --model /tmp/model/qwen2.5-coder-0.5b-instruct --out $OUT/lora
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
import traceback
from pathlib import Path

TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."  # config.DataConfig
GPU_SERVER_ARGS = "--attention-backend triton --sampling-backend pytorch --grammar-backend none"
ADAPTER_NAME = "bench"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5")
NOT_COPIED = {"config.json", "generation_config.json", "model.safetensors.index.json"}


# ---------------------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="HF model dir of the base model (Qwen2.5-Coder-0.5B-Instruct)")
    ap.add_argument("--out", required=True, help="output dir: sglang_lora.json, server logs")
    ap.add_argument("--workdir", default=None, help="where the adapter and merged model go (default: --out)")
    ap.add_argument("--data", default="/tmp/carry/gsm8k/test.jsonl", help="GSM8K jsonl with a 'question' field")
    ap.add_argument("--budget-s", type=float, default=420.0, help="wall-clock budget; later parts are skipped")
    ap.add_argument("--start-reserve-s", type=float, default=100.0,
                    help="do not start a server with less budget left than this")
    ap.add_argument("--server-timeout-s", type=float, default=300.0)
    ap.add_argument("--mem-fraction", type=float, default=0.3)
    ap.add_argument("--dtype", default="bfloat16", help="--dtype of both servers and of the merged model")
    ap.add_argument("--server-args", default=GPU_SERVER_ARGS,
                    help="extra args of both servers (space separated; '' for none)")
    # LoRA
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=int, default=32)
    ap.add_argument("--targets", default=TARGETS)
    ap.add_argument("--lora-b-std", type=float, default=0.01, help="std of the random lora_B init (peft's is 0)")
    ap.add_argument("--adapter-dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                    help="dtype of the LoRA weights, saved and merged alike (SGLang serves them in --dtype)")
    ap.add_argument("--lora-backend", default="csgmv", help="SGLang 0.5.17: triton, csgmv (default), torch_native")
    ap.add_argument("--max-loras-per-batch", type=int, default=2, help="slots, the base-only one included")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prep-device", default="auto", help="device for the peft model / merge: auto, cuda, cpu")
    # workload
    ap.add_argument("--prompts", type=int, default=8, help="prompts of the timed batch")
    ap.add_argument("--samples", type=int, default=8, help="samples per prompt (n)")
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--greedy-prompts", type=int, default=32)
    ap.add_argument("--greedy-max-new-tokens", type=int, default=128)
    ap.add_argument("--no-fixed-length", action="store_true", help="skip the ignore_eos (fixed length) timing")
    ap.add_argument("--no-tensor-load", action="store_true", help="skip /load_lora_adapter_from_tensors")
    return ap.parse_args(argv)


# ------------------------------------------------------------------------------ pure helpers
def log(*a) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


class Budget:
    def __init__(self, total_s: float, clock=time.monotonic):
        self.total_s, self.clock, self.t0 = total_s, clock, clock()

    def used(self) -> float:
        return self.clock() - self.t0

    def left(self) -> float:
        return self.total_s - self.used()

    def ok(self, need_s: float) -> bool:
        return self.left() >= need_s


def common_prefix_len(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def compare_outputs(xs: list[list[int]], ys: list[list[int]]) -> dict:
    """Token-id completions side by side: identical fraction, mean common prefix (tokens), lengths."""
    if len(xs) != len(ys) or not xs:
        raise ValueError(f"cannot compare {len(xs)} with {len(ys)} completions")
    pre = [common_prefix_len(a, b) for a, b in zip(xs, ys)]
    same = [a == b for a, b in zip(xs, ys)]
    # prefix relative to the shorter one: 1.0 = one is a prefix of the other
    rel = [p / max(1, min(len(a), len(b))) for p, a, b in zip(pre, xs, ys)]
    return {"n": len(xs), "identical_frac": sum(same) / len(xs), "mean_common_prefix": statistics.mean(pre),
            "median_common_prefix": statistics.median(pre), "mean_common_prefix_rel": statistics.mean(rel),
            "mean_len_a": statistics.mean(len(a) for a in xs), "mean_len_b": statistics.mean(len(b) for b in ys)}


def stats(secs: list[float], toks: list[int] | None = None) -> dict | None:
    if not secs:
        return None
    med = statistics.median(secs)
    out = {"n": len(secs), "median_s": med, "min_s": min(secs), "max_s": max(secs), "all_s": secs}
    if toks:
        out["median_tokens"] = statistics.median(toks)
        out["tok_per_s"] = sum(toks) / sum(secs)  # over all timed runs: lengths vary run to run at T=1
        out["tok_per_s_of_median_run"] = toks[secs.index(med)] / med if med in secs else None
    return out


def read_questions(path: str, n: int) -> list[str]:
    qs: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                qs.append(json.loads(line)["question"])
            if len(qs) >= n:
                break
    if len(qs) < n:
        raise SystemExit(f"{path} has {len(qs)} questions, {n} needed")
    return qs


def versions() -> dict:
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for pkg in ("sglang", "torch", "transformers", "peft", "safetensors", "sglang-kernel", "triton"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _fmt(x, spec: str = ".3f", none: str = "n/a") -> str:
    return none if x is None else format(x, spec)


def summary(res: dict) -> str:
    a, b = res.get("server_a") or {}, res.get("server_b") or {}
    ga, gb = (a.get("generate") or {}), (b.get("generate") or {})
    fa, fb = (a.get("generate_fixed") or {}), (b.get("generate_fixed") or {})
    upd = b.get("update_disk") or {}
    ten = b.get("update_tensors") or {}
    cor = res.get("correctness") or {}
    ab, aa, bb = cor.get("merged_vs_adapter") or {}, cor.get("merged_vs_merged_repeat") or {}, cor.get(
        "adapter_vs_base") or {}
    save = (res.get("prep") or {}).get("adapter_save") or {}
    ratio = None
    if ga.get("tok_per_s") and gb.get("tok_per_s"):
        ratio = gb["tok_per_s"] / ga["tok_per_s"]
    fratio = None
    if fa.get("median_s") and fb.get("median_s"):
        fratio = fb["median_s"] / fa["median_s"]
    step_b = None
    if upd.get("unload_plus_load") and save.get("median_s") is not None:
        step_b = upd["unload_plus_load"]["median_s"] + save["median_s"]
    return (
        f"SGLang {res.get('versions', {}).get('sglang')} on {res.get('gpu')}, {res.get('batch')}: "
        f"merged server A generates in {_fmt(ga.get('median_s'), '.2f')} s ({_fmt(ga.get('tok_per_s'), '.0f')} tok/s), "
        f"base+LoRA server B ({res.get('args', {}).get('lora_backend')}) in {_fmt(gb.get('median_s'), '.2f')} s "
        f"({_fmt(gb.get('tok_per_s'), '.0f')} tok/s; B/A throughput {_fmt(ratio, '.2f')}); at fixed length "
        f"{_fmt(fa.get('median_s'), '.2f')} vs {_fmt(fb.get('median_s'), '.2f')} s (B/A time {_fmt(fratio, '.2f')}). "
        f"A per-step adapter update on B costs save_pretrained {_fmt(save.get('median_s'))} s + unload+load from disk "
        f"{_fmt((upd.get('unload_plus_load') or {}).get('median_s'))} s = {_fmt(step_b)} s "
        f"(first request after a load {_fmt((upd.get('first_request_after_load') or {}).get('median_s'))} s vs "
        f"{_fmt((upd.get('second_request') or {}).get('median_s'))} s warm); unload+load from CUDA-IPC tensors "
        f"{_fmt((ten.get('unload_plus_load') or {}).get('median_s'))} s; A's merged-weights IPC push is measured "
        f"elsewhere (~0.03-0.07 s). Greedy {cor.get('n', 'n/a')} prompts x {cor.get('max_new_tokens', 'n/a')} tokens: "
        f"merged vs base+adapter identical {_fmt(ab.get('identical_frac'), '.2f')}, mean common prefix "
        f"{_fmt(ab.get('mean_common_prefix'), '.1f')} tokens (A vs A repeat {_fmt(aa.get('identical_frac'), '.2f')}; "
        f"adapter vs base on B {_fmt(bb.get('identical_frac'), '.2f')}: the adapter "
        f"{'changes' if bb and bb.get('identical_frac', 1) < 1 else 'may not change'} outputs). "
        f"Skipped: {', '.join(res.get('skipped') or []) or 'nothing'}; errors: {len(res.get('errors') or [])}."
    )


# --------------------------------------------------------------------------------- HTTP
class Http:
    def __init__(self, base_url: str):
        import requests

        self.base_url = base_url.rstrip("/")
        self.s = requests.Session()

    def post(self, path: str, body: dict, timeout: float = 600.0):
        r = self.s.post(self.base_url + path, json=body, timeout=timeout)
        if r.status_code != 200:
            raise RuntimeError(f"POST {path} -> HTTP {r.status_code}: {r.text[:2000]}")
        return r.json()

    def close(self) -> None:
        self.s.close()


def generate(http: Http, ids: list[list[int]], sp: dict, lora: str | None = None, logprob: bool = False) -> list[list[int]]:
    body: dict = {"input_ids": ids, "sampling_params": sp, "return_logprob": logprob}
    if lora is not None:
        body["lora_path"] = lora  # the adapter's lora_name (GenerateReqInput.lora_path)
    out = http.post("/generate", body)
    return [o["output_ids"] for o in out]


def lora_call(http: Http, path: str, body: dict) -> dict:
    out = http.post(path, body)
    if not out.get("success", False):
        raise RuntimeError(f"POST {path} failed: {out}")
    return out


# ------------------------------------------------------------------------------ the parts
def prepare(args, work: Path, res: dict) -> tuple[Path, Path]:
    """Adapter (peft layout) and merged model dirs; adapter-effect check in-process; save timing."""
    import gc

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    dev = args.prep_device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    prep: dict = {"device": dev}
    res["prep"] = prep
    adapter_dir, merged_dir = work / "adapter", work / "merged"
    for d in (adapter_dir, merged_dir):
        shutil.rmtree(d, ignore_errors=True)

    torch.manual_seed(args.seed)
    t = time.perf_counter()
    # fp32 for the merge; the merged model is cast to --dtype after it
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).to(dev)
    prep["load_base_s"] = time.perf_counter() - t
    cfg = LoraConfig(r=args.rank, lora_alpha=args.alpha, target_modules=args.targets.split(","),
                     lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, cfg)
    gen = torch.Generator(device="cpu").manual_seed(args.seed + 1)
    n_b = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * args.lora_b_std)
                n_b += 1
        for name, p in model.named_parameters():  # the same (rounded) adapter goes to disk and into the merge
            if "lora_" in name:
                p.data = p.data.to(getattr(torch, args.adapter_dtype))
    prep["lora_b_tensors"] = n_b
    prep["lora_params"] = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)

    # does the adapter change the model? logits with and without it on one prompt
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.model)
    ids = encode(tok, read_questions(args.data, 1))[0]
    x = torch.tensor([ids], device=dev)
    with torch.no_grad():
        lo_a = model(input_ids=x).logits.float()
        with model.disable_adapter():
            lo_b = model(input_ids=x).logits.float()
    prep["adapter_effect_fp32"] = {
        "mean_abs_logit_diff": (lo_a - lo_b).abs().mean().item(),
        "max_abs_logit_diff": (lo_a - lo_b).abs().max().item(),
        "argmax_agreement": (lo_a.argmax(-1) == lo_b.argmax(-1)).float().mean().item(),
        "positions": len(ids),
    }
    del lo_a, lo_b

    # the adapter, in peft's layout; save_pretrained timed like a per-step write
    secs = []
    for i in range(args.repeats):
        d = work / f"adapter_save_{i}"
        shutil.rmtree(d, ignore_errors=True)
        if dev == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        model.save_pretrained(str(d))
        secs.append(time.perf_counter() - t)
        if i == 0:
            d.rename(adapter_dir)
        else:
            shutil.rmtree(d, ignore_errors=True)
    prep["adapter_save"] = stats(secs)
    prep["adapter_files"] = {p.name: p.stat().st_size for p in adapter_dir.iterdir()}
    prep["adapter_config"] = json.loads((adapter_dir / "adapter_config.json").read_text())

    # the merged model
    t = time.perf_counter()
    merged = model.merge_and_unload()
    if dev == "cuda":
        torch.cuda.synchronize()
    prep["merge_s"] = time.perf_counter() - t
    merged = merged.to(getattr(torch, args.dtype))
    t = time.perf_counter()
    merged.save_pretrained(str(merged_dir))
    prep["merged_save_s"] = time.perf_counter() - t
    copied = []
    for p in Path(args.model).iterdir():  # tokenizer files etc., byte for byte
        if p.is_file() and p.name not in NOT_COPIED and not p.name.endswith(WEIGHT_SUFFIXES) \
                and not (merged_dir / p.name).exists():
            shutil.copy2(p, merged_dir / p.name)
            copied.append(p.name)
    prep["merged_copied_files"] = copied
    prep["merged_files"] = sorted(p.name for p in merged_dir.iterdir())

    del model, merged
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return adapter_dir, merged_dir


def encode(tok, questions: list[str]) -> list[list[int]]:
    try:  # the project's own prompt (same as training and eval)
        from gsm8k_grpo.data.prompts import encode as project_encode

        return [project_encode(tok, q, INSTRUCTION) for q in questions]
    except ImportError:
        out = []
        for q in questions:
            text = tok.apply_chat_template([{"role": "user", "content": f"{q}\n{INSTRUCTION}"}], tokenize=False,
                                           add_generation_prompt=True)
            out.append(tok(text, add_special_tokens=False)["input_ids"])
        return out


def stop_ids(tok, model_dir: str) -> list[int]:
    """The project's stop ids (end-of-turn + the generation config's eos ids): 151645, 151643 for Qwen2.5."""
    try:
        from transformers import GenerationConfig

        gen_cfg = GenerationConfig.from_pretrained(model_dir)
    except Exception:  # noqa: BLE001 - recorded, the run goes on
        gen_cfg = None
    try:
        from gsm8k_grpo.data.prompts import stop_token_ids

        return list(stop_token_ids(tok, gen_cfg))
    except ImportError:
        return [151645, 151643]


def start_server(model_path: str, args, log_path: Path, extra: list[str], budget: Budget):
    from gsm8k_grpo.rollout.server import SGLangServer

    srv = SGLangServer(model_path, mem_fraction=args.mem_fraction,
                       extra_args=args.server_args.split() + ["--random-seed", str(args.seed)] + extra,
                       log_path=log_path, timeout_s=max(30.0, min(args.server_timeout_s, budget.left() - 10)),
                       dtype=args.dtype)
    srv.start()
    return srv


def time_generate(http: Http, ids, sp: dict, lora: str | None, args, budget: Budget, need_s: float) -> dict | None:
    for _ in range(args.warmup):
        generate(http, ids, sp, lora, logprob=True)
    secs, toks = [], []
    for _ in range(args.repeats):
        if secs and not budget.ok(need_s + max(secs)):
            break
        t = time.perf_counter()
        outs = generate(http, ids, sp, lora, logprob=True)  # the trainer asks for logprobs too
        secs.append(time.perf_counter() - t)
        toks.append(sum(len(o) for o in outs))
    out = stats(secs, toks)
    if out is not None:
        out["sequences"] = len(ids) * sp.get("n", 1)
    return out


def run_generate_parts(http: Http, who: dict, lora: str | None, ctx: dict, args, budget: Budget, res: dict,
                       tag: str, reserve_s: float) -> None:
    if budget.ok(reserve_s + 20):
        who["generate"] = time_generate(http, ctx["batch_ids"], ctx["sp"], lora, args, budget, reserve_s)
        log(f"{tag} generate: {who['generate']['median_s']:.2f}s {who['generate']['tok_per_s']:.0f} tok/s")
    else:
        res["skipped"].append(f"{tag}.generate")
    save(res, args)
    if args.no_fixed_length:
        return
    if budget.ok(reserve_s + 25):
        who["generate_fixed"] = time_generate(http, ctx["batch_ids"], dict(ctx["sp"], ignore_eos=True), lora, args,
                                              budget, reserve_s)
        log(f"{tag} generate fixed length: {who['generate_fixed']['median_s']:.2f}s "
            f"{who['generate_fixed']['tok_per_s']:.0f} tok/s")
    else:
        res["skipped"].append(f"{tag}.generate_fixed")
    save(res, args)


def tiny_request(http: Http, ids: list[int], lora: str | None, stop: list[int]) -> float:
    t = time.perf_counter()
    generate(http, [ids], {"temperature": 0.0, "max_new_tokens": 1, "stop_token_ids": stop}, lora)
    return time.perf_counter() - t


def run_server_a(merged_dir: Path, out: Path, ctx: dict, args, budget: Budget, res: dict) -> None:
    a: dict = {"model_path": str(merged_dir), "update": None,
               "update_note": "merged weights are pushed by CUDA IPC (src/gsm8k_grpo/weights/ipc.py), "
                              "measured elsewhere: ~0.03-0.07 s a push for this model"}
    res["server_a"] = a
    srv = http = None
    try:
        t = time.perf_counter()
        srv = start_server(str(merged_dir), args, out / "server_a.log", [], budget)
        a["startup_s"] = time.perf_counter() - t
        a["command"] = srv.command(srv.port)
        log(f"server A up in {a['startup_s']:.0f}s (merged)")
        http = Http(srv.base_url)
        g = generate(http, ctx["greedy_ids"], ctx["greedy_sp"])
        ctx["greedy_a"] = g
        if budget.ok(ctx["reserve_b"] + 10):
            ctx["greedy_a2"] = generate(http, ctx["greedy_ids"], ctx["greedy_sp"])
        save(res, args)
        run_generate_parts(http, a, None, ctx, args, budget, res, "A", ctx["reserve_b"])
    except Exception as e:  # noqa: BLE001 - recorded, the run goes on
        record_error(res, "server_a", e)
        log("server A failed:", repr(e))
    finally:
        shut_down(http, srv, res, args)


def record_error(res: dict, part: str, e: Exception) -> None:
    """A part that failed: recorded in the results, and the run goes on."""
    res["errors"].append({"part": part, "error": repr(e), "trace": traceback.format_exc()[-4000:]})


def shut_down(http, srv, res: dict, args) -> None:
    """The end of a server's part: its HTTP session closed, its process group stopped, results saved."""
    if http is not None:
        http.close()
    if srv is not None:
        srv.stop()
    save(res, args)


def load_tensors_payload(adapter_dir: Path):
    """The adapter's tensors on the GPU (as saved: same names, same dtype) and its config dict."""
    import torch
    from safetensors.torch import load_file

    tensors = {k: v.to("cuda") for k, v in load_file(str(adapter_dir / "adapter_model.safetensors")).items()}
    torch.cuda.synchronize()
    return tensors, json.loads((adapter_dir / "adapter_config.json").read_text())


def load_from_tensors(http: Http, name: str, tensors: dict, config: dict) -> None:
    """POST /load_lora_adapter_from_tensors with one CUDA-IPC flattened bucket (as our ipc.py does)."""
    import torch
    from sglang.srt.utils import MultiprocessingSerializer
    from sglang.srt.utils.patch_torch import monkey_patch_torch_reductions
    from sglang.srt.weight_sync.tensor_bucket import FlattenedTensorBucket

    monkey_patch_torch_reductions()
    flat = FlattenedTensorBucket(named_tensors=list(tensors.items()))
    payload = {"flattened_tensor": flat.get_flattened_tensor(), "metadata": flat.get_metadata()}
    try:
        torch.cuda.current_stream().synchronize()
        s = MultiprocessingSerializer.serialize(payload, output_str=True)
        lora_call(http, "/load_lora_adapter_from_tensors",
                  {"lora_name": name, "config_dict": config, "serialized_named_tensors": [s],
                   "load_format": "flattened_bucket", "pinned": False})
    finally:
        del flat, payload
        torch.cuda.ipc_collect()


def run_server_b(adapter_dir: Path, out: Path, ctx: dict, args, budget: Budget, res: dict) -> None:
    b: dict = {"model_path": args.model, "adapter_path": str(adapter_dir), "adapter_name": ADAPTER_NAME}
    res["server_b"] = b
    lora_args = ["--enable-lora", "--max-lora-rank", str(args.rank),
                 "--lora-target-modules", *args.targets.split(","),
                 "--max-loras-per-batch", str(args.max_loras_per_batch), "--lora-backend", args.lora_backend]
    srv = http = None
    name, stop, probe = ADAPTER_NAME, ctx["stop"], ctx["greedy_ids"][0]
    load_body = {"lora_name": name, "lora_path": str(adapter_dir), "pinned": False}
    try:
        t = time.perf_counter()
        srv = start_server(args.model, args, out / "server_b.log", lora_args, budget)
        b["startup_s"] = time.perf_counter() - t
        b["command"] = srv.command(srv.port)
        log(f"server B up in {b['startup_s']:.0f}s (base + LoRA, {args.lora_backend})")
        http = Http(srv.base_url)
        t = time.perf_counter()
        b["first_load_response"] = lora_call(http, "/load_lora_adapter", load_body)
        b["first_load_s"] = time.perf_counter() - t
        ctx["greedy_b"] = generate(http, ctx["greedy_ids"], ctx["greedy_sp"], name)
        ctx["greedy_b_base"] = generate(http, ctx["greedy_ids"], ctx["greedy_sp"], None)
        save(res, args)
        run_generate_parts(http, b, name, ctx, args, budget, res, "B", 30.0)

        # per-step update: unload + load from disk
        if budget.ok(30):
            un, ld, both, first, second = [], [], [], [], []
            for _ in range(args.repeats):
                if un and not budget.ok(15):
                    break
                t0 = time.perf_counter()
                lora_call(http, "/unload_lora_adapter", {"lora_name": name})
                t1 = time.perf_counter()
                lora_call(http, "/load_lora_adapter", load_body)
                t2 = time.perf_counter()
                un.append(t1 - t0)
                ld.append(t2 - t1)
                both.append(t2 - t0)
                first.append(tiny_request(http, probe, name, stop))
                second.append(tiny_request(http, probe, name, stop))
            b["update_disk"] = {"unload": stats(un), "load": stats(ld), "unload_plus_load": stats(both),
                                "first_request_after_load": stats(first), "second_request": stats(second)}
            log(f"B unload+load from disk: {b['update_disk']['unload_plus_load']['median_s']:.3f}s")
        else:
            res["skipped"].append("B.update_disk")
        save(res, args)

        # per-step update: unload + load from CUDA-IPC tensors (no disk)
        if args.no_tensor_load:
            res["skipped"].append("B.update_tensors (--no-tensor-load)")
        elif budget.ok(25):
            try:
                tensors, config = load_tensors_payload(adapter_dir)
                un, ld, both = [], [], []
                for _ in range(args.repeats):
                    if un and not budget.ok(12):
                        break
                    t0 = time.perf_counter()
                    lora_call(http, "/unload_lora_adapter", {"lora_name": name})
                    t1 = time.perf_counter()
                    load_from_tensors(http, name, tensors, config)
                    t2 = time.perf_counter()
                    un.append(t1 - t0)
                    ld.append(t2 - t1)
                    both.append(t2 - t0)
                b["update_tensors"] = {"unload": stats(un), "load": stats(ld), "unload_plus_load": stats(both),
                                       "bytes": sum(t.numel() * t.element_size() for t in tensors.values()),
                                       "dtype": str(next(iter(tensors.values())).dtype)}
                log(f"B unload+load from tensors: {b['update_tensors']['unload_plus_load']['median_s']:.3f}s")
                ctx["greedy_b_tensors"] = generate(http, ctx["greedy_ids"], ctx["greedy_sp"], name)
                del tensors
            except Exception as e:  # noqa: BLE001 - recorded, the run goes on
                record_error(res, "B.update_tensors", e)
                log("B load from tensors failed:", repr(e))
        else:
            res["skipped"].append("B.update_tensors")
    except Exception as e:  # noqa: BLE001 - recorded, the run goes on
        record_error(res, "server_b", e)
        log("server B failed:", repr(e))
    finally:
        shut_down(http, srv, res, args)


def fill_correctness(ctx: dict, res: dict) -> None:
    cor = res["correctness"]
    pairs = {"merged_vs_adapter": ("greedy_a", "greedy_b"), "merged_vs_merged_repeat": ("greedy_a", "greedy_a2"),
             "adapter_vs_base": ("greedy_b", "greedy_b_base"), "merged_vs_base": ("greedy_a", "greedy_b_base"),
             "adapter_disk_vs_tensors": ("greedy_b", "greedy_b_tensors")}
    for key, (x, y) in pairs.items():
        if ctx.get(x) is not None and ctx.get(y) is not None:
            cor[key] = compare_outputs(ctx[x], ctx[y])


def save(res: dict, args) -> None:
    out = Path(args.out) / "sglang_lora.json"
    res["elapsed_s"] = round(time.monotonic() - res["_t0"], 1)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({k: v for k, v in res.items() if not k.startswith("_")}, indent=1, default=str))
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    budget = Budget(args.budget_s)
    src = Path(__file__).resolve().parents[1] / "src"
    if src.is_dir() and str(src) not in sys.path:
        sys.path.insert(0, str(src))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.workdir) if args.workdir else out
    work.mkdir(parents=True, exist_ok=True)
    res: dict = {"_t0": time.monotonic(), "args": vars(args), "versions": versions(), "skipped": [], "errors": [],
                 "batch": f"{args.prompts} prompts x {args.samples} samples x {args.max_new_tokens} new tokens, T=1",
                 "correctness": {"n": args.greedy_prompts, "max_new_tokens": args.greedy_max_new_tokens,
                                 "temperature": 0.0}}
    save(res, args)

    import torch
    from transformers import AutoTokenizer

    res["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    tok = AutoTokenizer.from_pretrained(args.model)
    stop = stop_ids(tok, args.model)
    qs = read_questions(args.data, max(args.prompts, args.greedy_prompts))
    ctx: dict = {"stop": stop, "batch_ids": encode(tok, qs[:args.prompts]),
                 "greedy_ids": encode(tok, qs[:args.greedy_prompts]),
                 "sp": {"n": args.samples, "temperature": 1.0, "top_p": 1.0, "top_k": -1,
                        "max_new_tokens": args.max_new_tokens, "stop_token_ids": stop},
                 "greedy_sp": {"temperature": 0.0, "max_new_tokens": args.greedy_max_new_tokens,
                               "stop_token_ids": stop},
                 # what server B needs, at the least: its start and a few calls
                 "reserve_b": args.start_reserve_s + 40}
    res["stop_token_ids"] = stop
    res["prompt_lens"] = [len(x) for x in ctx["batch_ids"]]

    try:
        log("preparing the adapter and the merged model")
        adapter_dir, merged_dir = prepare(args, work, res)
        log(f"adapter {adapter_dir}, merged {merged_dir}, save_pretrained {res['prep']['adapter_save']['median_s']:.3f}s")
    except Exception as e:  # noqa: BLE001 - recorded, the run goes on
        record_error(res, "prep", e)
        save(res, args)
        log("prep failed:", repr(e))
        return 1
    save(res, args)

    if budget.ok(args.start_reserve_s + ctx["reserve_b"]):
        run_server_a(merged_dir, out, ctx, args, budget, res)
    else:
        res["skipped"].append("server_a")
    fill_correctness(ctx, res)
    if budget.ok(args.start_reserve_s):
        run_server_b(adapter_dir, out, ctx, args, budget, res)
    else:
        res["skipped"].append("server_b")
    fill_correctness(ctx, res)
    res["summary"] = summary(res)
    save(res, args)
    print(res["summary"], flush=True)
    log("wrote", out / "sglang_lora.json")
    return 0 if not res["errors"] else 2


if __name__ == "__main__":
    sys.exit(main())
