"""GPU memory of a run, estimated from the model's config.json, and the plan that fits it on a card.

Estimates in bytes; h hidden size, L layers, I intermediate size, V vocab, b = 2 (bf16) or 4 (fp32):
    trainer  = 16 · params / trainer GPUs                 fp32 weights + grads + Adam m, v (FSDP shards them)
               (LoRA: 4 · params + 16 · adapter params)   the frozen fp32 weights have no grads or Adam state
             + b · params with algorithm.kl_coef > 0       the reference model
             + 1.13 · T · L · (10h + 4I) · b              activations of one micro-batch of T tokens
               (1.13 · T · (L·h + 10h + 4I) · b           with gradient checkpointing: layer inputs only)
             + C · V · (b + 8)                            one log-prob chunk of C tokens (logits, fp32 grad;
                                                          + 4 with algorithm.entropy_coef > 0)
               (or, when larger, 4 · trained params        AdamW's foreach step: a full-size temporary)
             = allocated, then · 1.15 + 1.2 GiB          the caching allocator's slack, the CUDA context and
                                                          workspaces: the trainer process as nvidia-smi sees it
    server   = mem_fraction · card + 3.5 GiB              SGLang's static pool (weights + KV cache),
                                                          plus its context, CUDA graphs and workspace
               (+ 0.5 GiB beside a LoRA trainer)
    rollout  = 2 · params + KV bytes/token · B·G·(256 + max_new_tokens) · 1.5   what the pool must hold
               (B = prompts per step: ceil(batch_size · algorithm.oversample))
The factor 1.13 and (first) a 2 GiB server overhead were calibrated on an H100 with the `1hour` shapes (2026-11-27,
bench/results/2026-11-27-h100.md): measured trainer peak 32.5 GiB, SGLang at mem_fraction 0.4 took
33.7 GiB of the card. On the H200 (2026-12-03, bench/results/2026-12-03-h200-session9.md, Qwen2.5-Coder-
0.5B, 630M parameters with its own lm_head) `allocated` matched torch's peak within 2 % at micro-batches
of 4,096 and 2,048 tokens (17.2 vs 17.0, 14.3 vs 14.4 GiB), but the trainer process took 20.7 GiB by
NVML at 17.0 allocated: the 1.15 and 1.2 GiB above. With gradient checkpointing and small micro-batches
the optimizer step is the peak (state + 4 bytes a parameter): the 16 GiB plan that left it out ran out
of memory there. SGLang beyond its static pool (weights + KV cache) was 2 GiB in 10-step runs but grew
over whole 1hour runs (its caching allocator keeps its largest transients): 3.1 GiB in four full
fine-tuning runs and 3.6 GiB in a LoRA run at the 12 GiB plan, by NVML (2026-12-03 session 10,
bench/results/2026-12-03-h200-session10.md); hence 3.5 GiB, which a trainer capped at the rest of a limit
(cap() below) cannot absorb. Session 11 (bench/results/2026-12-03-h200-session11.md) ran that plan over
whole runs: four full fine-tuning runs at 24 GiB peaked at 22.95-23.44 GiB (SGLang 5.23-5.48 GiB with a
pool of 149,091 tokens: 2.4-2.6 GiB beyond weights + pool, so the 3.5 covers them), but the LoRA run at 12 GiB
at 12.2 GiB: its SGLang took 5.75 GiB with a pool of 75,691 tokens, 3.7 GiB beyond (3.6 in session 10's
LoRA run). SGLang serves the same merged weights either way, and why it holds more beside a LoRA trainer is
not known; the estimate adds what was measured, 0.5 GiB, for LoRA runs.

fit(): on a GPU shared by trainer and server, while the estimate is above 95 % of the card, take the
first of these steps whose setting is still at its default (a value changed by a preset, --config or
--set is the user's and stays; defaults rather than "named" keys, because RUN_DIR/config.yaml and
`grpo resume` carry every key), and repeat:
    1. rollout.mem_fraction down to what the rollout needs (at least 0.08)
    2. trainer.micro_batch_tokens halved, down to 2048 (logprob_chunk follows when larger)
    3. trainer.grad_checkpointing on
    4. trainer.logprob_chunk halved, down to 256 (its fp32 logits and their grad: 1.4 GiB at 1024)
The run then logs what it changed. verdict() judges the estimate after fit(): within 95 % of the
card it fits; up to the whole card it is tight (a warning: the estimate is approximate); above the
card it does not fit, and `grpo train` refuses before it loads the model, with what to change.

trainer.gpu_memory_limit (a card shared with other work, or a small card's plan tried on a big one):
the plan is made for the limit, not the card, and cap() turns it into absolute caps:
    SGLang   --max-total-tokens N: its KV pool holds N tokens, N = (mem_fraction · limit - weights) /
             KV bytes per token, whatever else the card holds; --mem-fraction-static 0.9 only so that
             SGLang's memory profile passes beside other processes (its pool is N tokens either way)
    trainer  torch.cuda.set_per_process_memory_fraction((limit - server - context) / card)
On a card (or limit) under 35 GiB SGLang captures decode CUDA graphs only up to batch 8 (< 20 GiB)
or 24 (< 35 GiB) by default; a step decodes batch_size x n sequences at once, so graph_args() asks
for graphs up to that batch (a few hundred MiB for a 0.5B model, inside the 3.5 GiB above), and
--max-running-requests the same, so that an in-run eval of many questions queues them instead of
growing the server: SGLang 0.5.17 admits up to 2,048 requests by default, decodes batches above the
captured graphs eagerly (fp32 [batch, vocab] logits and log-probs each step) and, once the KV pool is
full, retracts requests and prefills them again with input log-probs. An in-run eval of 1,319
questions took one server from 5.2 to 24.1 GiB under a 24 GiB plan (H200, session 13); 200 stayed at
5.25. A step's own generation is never more than that many requests, so it does not change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

GIB = 1024**3
ACT_CALIBRATION = 1.13
SERVER_OVERHEAD = int(3.5 * GIB)   # SGLang beyond weights + KV pool over a whole run (docstring)
LORA_SERVER_EXTRA = int(0.5 * GIB)  # and 0.5 GiB more beside a LoRA trainer, measured, not explained (docstring)
CONTEXT = int(1.2 * GIB)     # the trainer process beyond torch's allocator: CUDA context, cuBLAS workspaces
OWN_CONTEXT = int(0.5 * GIB)  # of CONTEXT, what the process already holds when it plans (usable_bytes)
FRAGMENTATION = 0.15         # the caching allocator holds this much above its peak allocation
PROMPT_TOKENS = 256        # GSM8K prompts with the chat template stay below this
MIN_MEM_FRACTION = 0.08
MIN_MICRO_TOKENS = 2048
MIN_LOGPROB_CHUNK = 256
FIT_SHARE = 0.95  # of the card: the estimate now models the process overheads (CONTEXT, FRAGMENTATION)
SMALL_CARD = 35 * GIB          # SGLang's own default decode graph batch is 8 below 20 GiB, 24 below 35 GiB
LIMITED_STATIC_FRACTION = 0.9  # with --max-total-tokens: only so that SGLang's profile passes on a shared card


def usable_bytes(total: int, free: int | None) -> int:
    """The memory a run may plan for on a card: all of it but what other processes hold when the run
    starts (a desktop or a browser on a consumer card, another job). `free` is torch.cuda.mem_get_info's,
    read once this process has its CUDA context (about OWN_CONTEXT, which CONTEXT counts again): an
    otherwise idle card gives its total, so only memory that others hold shrinks the plan."""
    return total if free is None else min(total, free + OWN_CONTEXT)


def plan_bytes(total: int, free: int | None, limit: int | None) -> tuple[int, int]:
    """(usable, plan) for a card: what other processes leave of it (usable_bytes), and what a run plans
    for: that, or trainer.gpu_memory_limit when smaller. grpo train and grpo doctor both ask here."""
    usable = usable_bytes(total, free)
    return usable, (min(usable, limit) if limit else usable)


def held_by_others(total: int, usable: int) -> str:
    """'X GiB of it held by other processes' when they hold any of the card (usable_bytes), else ''."""
    return f"{(total - usable) / GIB:.1f} GiB of it held by other processes" if total - usable >= 0.05 * GIB else ""


def estimate_params(c: dict) -> int:
    """Parameter count of a Llama/Qwen2-style decoder from its config.json fields."""
    h, layers, vocab = int(c["hidden_size"]), int(c["num_hidden_layers"]), int(c["vocab_size"])
    inter = int(c.get("intermediate_size") or 4 * h)
    heads = int(c.get("num_attention_heads") or max(1, h // 64))
    kv_heads = int(c.get("num_key_value_heads") or heads)
    head_dim = int(c.get("head_dim") or h // heads)
    q_dim, kv_dim = heads * head_dim, kv_heads * head_dim
    bias = q_dim + 2 * kv_dim if c.get("model_type", "qwen2") == "qwen2" or c.get("attention_bias") else 0
    attn = h * q_dim + 2 * h * kv_dim + q_dim * h + bias
    per_layer = attn + 3 * h * inter + 2 * h
    head = 0 if c.get("tie_word_embeddings", True) else vocab * h
    return layers * per_layer + vocab * h + head + h


def kv_bytes_per_token(c: dict, b: int = 2) -> int:
    h = int(c["hidden_size"])
    heads = int(c.get("num_attention_heads") or max(1, h // 64))
    head_dim = int(c.get("head_dim") or h // heads)
    return 2 * int(c["num_hidden_layers"]) * int(c.get("num_key_value_heads") or heads) * head_dim * b


def lora_params(c: dict, lora) -> int:
    """Parameters of LoRA adapters of rank lora.rank on lora.target_modules of every decoder layer."""
    h = int(c["hidden_size"])
    inter = int(c.get("intermediate_size") or 4 * h)
    heads = int(c.get("num_attention_heads") or max(1, h // 64))
    head_dim = int(c.get("head_dim") or h // heads)
    q, kv = heads * head_dim, int(c.get("num_key_value_heads") or heads) * head_dim
    shapes = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
              "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}
    per_layer = sum(sum(shapes.get(t, (h, h))) for t in lora.target_modules)
    return lora.rank * per_layer * int(c["num_hidden_layers"])


@dataclass(frozen=True)
class Estimate:
    params: int
    state: float          # per trainer GPU
    activations: float
    trainer: float        # the trainer process: (state + max(activations, optimizer step)) * 1.15 + context
    server: float         # on the trainer's GPU only when shared, else 0
    allocated: float = 0.0  # torch's peak allocation in the trainer (what peak_mem_gb reports)

    saver: bool = False     # rollout.enable_memory_saver: SGLang releases its memory during the update

    @property
    def total(self) -> float:
        """The peak of trainer + SGLang on one GPU. With the memory saver SGLang's memory is released
        while the trainer is at its peak: then the larger of the two phases (generation: SGLang beside
        the trainer's state; the update: the trainer alone)."""
        if self.saver and self.server:
            resting = self.state * (1 + FRAGMENTATION) + CONTEXT
            return max(self.trainer, self.server + resting)
        return self.trainer + self.server


def estimate(mc: dict, cfg, card_bytes: float, shared: bool, trainer_gpus: int = 1, bf16: bool = True) -> Estimate:
    """Memory on the trainer's GPU for RunConfig `cfg` (its trainer and rollout settings)."""
    t = cfg.trainer
    params = estimate_params(mc)
    b = 2 if bf16 else 4
    h, layers = int(mc["hidden_size"]), int(mc["num_hidden_layers"])
    inter, vocab = int(mc.get("intermediate_size") or 4 * h), int(mc["vocab_size"])
    per_tok_layer = (10 * h + 4 * inter) * b
    tokens = t.micro_batch_tokens
    saved = (layers * h * b + per_tok_layer) if t.grad_checkpointing else layers * per_tok_layer
    head = b + 8 + (4 if cfg.algorithm.entropy_coef > 0 else 0)  # the entropy term's second fp32 buffer
    act = ACT_CALIBRATION * tokens * saved + min(t.logprob_chunk, tokens) * vocab * head
    lora = getattr(cfg, "lora", None)
    if lora is not None and lora.rank:
        state = (4 * params + 16 * lora_params(mc, lora)) / max(1, trainer_gpus)
    else:
        state = 16 * params / max(1, trainer_gpus)
    tokens = max_total_tokens(cfg.rollout.server_args)
    overhead = SERVER_OVERHEAD + (LORA_SERVER_EXTRA if lora is not None and lora.rank else 0)
    if tokens is not None:  # an absolute pool (as trainer.gpu_memory_limit sets it): weights + that many tokens
        server = 2 * params + tokens * kv_bytes_per_token(mc) + overhead if shared else 0.0
    else:
        server = cfg.rollout.mem_fraction * card_bytes + overhead if shared else 0.0
    trained = lora_params(mc, lora) if lora is not None and lora.rank else params
    if cfg.algorithm.kl_coef > 0:  # the reference model: a frozen copy of the initial weights, in the compute dtype
        state += b * params
    allocated = state + max(act, 4 * trained / max(1, trainer_gpus))
    return Estimate(params, state, act, allocated * (1 + FRAGMENTATION) + CONTEXT, server, allocated,
                    saver=bool(cfg.rollout.enable_memory_saver and shared))


def max_total_tokens(server_args: list[str]) -> int | None:
    """SGLang's --max-total-tokens N among the server arguments (the last one wins, as in argparse)."""
    found = None
    for i, arg in enumerate(server_args):
        if arg == "--max-total-tokens" and i + 1 < len(server_args):
            found = server_args[i + 1]
        elif arg.startswith("--max-total-tokens="):
            found = arg.split("=", 1)[1]
    try:
        return int(found) if found is not None else None
    except ValueError:
        return None


def rollout_fraction(mc: dict, cfg, card_bytes: float) -> float:
    """The smallest SGLang mem_fraction that holds the weights and one step's KV cache, with margin."""
    r = cfg.rollout
    tokens = step_sequences(cfg) * (PROMPT_TOKENS + r.max_new_tokens)   # with algorithm.oversample
    need = 2 * estimate_params(mc) + 1.5 * kv_bytes_per_token(mc) * tokens
    return max(MIN_MEM_FRACTION, round(need / card_bytes + 0.005, 2))


def fit(mc: dict, cfg, card_bytes: float, shared: bool, trainer_gpus: int = 1,
        bf16: bool = True) -> tuple[object, list[str], Estimate]:
    """-> (cfg, changes, estimate): cfg with unpinned memory settings lowered until the run fits the card."""
    changes: list[str] = []
    budget = FIT_SHARE * card_bytes
    pinned_r, pinned_t = _changed(cfg.rollout), _changed(cfg.trainer)
    while True:
        est = estimate(mc, cfg, card_bytes, shared, trainer_gpus, bf16)
        if est.total <= budget:
            return cfg, changes, est
        r, t = cfg.rollout, cfg.trainer
        want = rollout_fraction(mc, cfg, card_bytes)
        if shared and "mem_fraction" not in pinned_r and want < r.mem_fraction:
            cfg = cfg.model_copy(update={"rollout": r.model_copy(update={"mem_fraction": want})})
            changes.append(f"rollout.mem_fraction {r.mem_fraction} -> {want}")
        elif "micro_batch_tokens" not in pinned_t and t.micro_batch_tokens > MIN_MICRO_TOKENS:
            mbt = max(MIN_MICRO_TOKENS, t.micro_batch_tokens // 2)
            upd = {"micro_batch_tokens": mbt}
            if t.logprob_chunk > mbt and "logprob_chunk" not in pinned_t:
                upd["logprob_chunk"] = mbt
            cfg = cfg.model_copy(update={"trainer": t.model_copy(update=upd)})
            _record(changes, "trainer.micro_batch_tokens", t.micro_batch_tokens, mbt)
            if "logprob_chunk" in upd:
                _record(changes, "trainer.logprob_chunk", t.logprob_chunk, mbt)
        elif "grad_checkpointing" not in pinned_t and not t.grad_checkpointing:
            cfg = cfg.model_copy(update={"trainer": t.model_copy(update={"grad_checkpointing": True})})
            changes.append("trainer.grad_checkpointing false -> true")
        elif "logprob_chunk" not in pinned_t and t.logprob_chunk > MIN_LOGPROB_CHUNK:
            chunk = max(MIN_LOGPROB_CHUNK, t.logprob_chunk // 2)
            cfg = cfg.model_copy(update={"trainer": t.model_copy(update={"logprob_chunk": chunk})})
            _record(changes, "trainer.logprob_chunk", t.logprob_chunk, chunk)
        else:
            return cfg, changes, est


def _record(changes: list[str], key: str, old, new) -> None:
    """One entry per setting in `changes`: from its first value to where the halving stopped."""
    first = next((c for c in changes if c.startswith(key + " ")), None)
    if first:
        changes[changes.index(first)] = f"{first.rsplit(' -> ', 1)[0]} -> {new}"
    else:
        changes.append(f"{key} {old} -> {new}")


def _changed(section) -> set[str]:
    """Fields of a config section whose value differs from the field's default."""
    return {k for k, f in type(section).model_fields.items()
            if not f.is_required() and getattr(section, k) != f.get_default(call_default_factory=True)}


def verdict(est: Estimate, card_bytes: float, extra: float = 0.0) -> str:
    """'fits' (within FIT_SHARE of the card), 'tight' (within the card) or 'no' (above it)."""
    need = est.total + extra
    return "fits" if need <= FIT_SHARE * card_bytes else "tight" if need <= card_bytes else "no"


def refusal(est: Estimate, card_bytes: float, cfg, what: str = "this GPU", mc: dict | None = None) -> str:
    """The one line of a run that does not fit: the estimate, and what would make it fit. With the
    model's config `mc`, a lower rollout.mem_fraction is named only while it is above what one step's
    rollout needs (fit() lowers an unpinned one to exactly that)."""
    fixes = []
    above_need = mc is None or cfg.rollout.mem_fraction > rollout_fraction(mc, cfg, card_bytes)
    if est.server > 0.5 * card_bytes and above_need:  # a pool set (pinned) far above what a step needs
        fixes.append(f"a lower rollout.mem_fraction (now {cfg.rollout.mem_fraction}: SGLang ≈ {est.server / GIB:.1f} GiB)")
    lora = getattr(cfg, "lora", None)
    if lora is not None and not lora.rank:
        fixes.append("lora.rank=16 lora.alpha=32 optimizer.lr=2e-5 (LoRA adapters at a 10x learning rate; the "
                     "frozen weights need no gradients or Adam state)")
    if not cfg.trainer.grad_checkpointing:
        fixes.append("trainer.grad_checkpointing=true")
    fixes.append("a smaller model or a bigger GPU")
    return f"memory: {describe(est, card_bytes)}: does not fit {what}; set " + ", or ".join(fixes)


def graph_args(cfg, card_bytes: float) -> list[str]:
    """SGLang arguments for a card under SMALL_CARD: decode CUDA graphs up to one step's sequences, and at
    most that many requests running at once (module docstring), each unless the user gave it."""
    r = cfg.rollout
    if card_bytes >= SMALL_CARD:
        return []
    n = str(step_sequences(cfg))
    args = [] if _has_flag(r.server_args, "--cuda-graph-max-bs", "--cuda-graph-max-bs-decode") \
        else ["--cuda-graph-max-bs", n]
    return args + ([] if _has_flag(r.server_args, "--max-running-requests") else ["--max-running-requests", n])


def _has_flag(args: list[str], *flags: str) -> bool:
    """Whether any of `flags` is among the server arguments, as `--flag value` or `--flag=value`."""
    return any(a in flags or a.split("=", 1)[0] in flags for a in args)


def step_sequences(cfg) -> int:
    """Sequences one step generates: prompts (with algorithm.oversample) x group size."""
    return cfg.prompts_per_step * cfg.rollout.n


@dataclass(frozen=True)
class Caps:
    kv_tokens: int             # SGLang's --max-total-tokens
    trainer_fraction: float    # of the whole card, for torch.cuda.set_per_process_memory_fraction
    trainer_bytes: float


def cap(mc: dict, cfg, card_bytes: float, limit_bytes: float, est: Estimate, shared: bool) -> tuple[object, Caps]:
    """trainer.gpu_memory_limit as absolute caps (module docstring): -> (cfg with SGLang's arguments, Caps).
    cfg is fit()'s, planned for limit_bytes; est its estimate."""
    r = cfg.rollout
    weights = 2 * estimate_params(mc)
    own = max_total_tokens(r.server_args)  # the user's own absolute pool (estimate() planned with it) stays
    kv_tokens = own or max(1, int((r.mem_fraction * limit_bytes - weights) / kv_bytes_per_token(mc)))
    trainer_bytes = limit_bytes - est.server - CONTEXT
    if shared:
        args = list(r.server_args) + ([] if own else ["--max-total-tokens", str(kv_tokens)])
        update = {"server_args": args}
        if not _has_flag(r.server_args, "--mem-fraction-static"):
            update["mem_fraction"] = max(r.mem_fraction, LIMITED_STATIC_FRACTION)
        cfg = cfg.model_copy(update={"rollout": r.model_copy(update=update)})
    return cfg, Caps(kv_tokens, min(1.0, max(trainer_bytes, 0.0) / card_bytes), trainer_bytes)


def describe(est: Estimate, card_bytes: float) -> str:
    s = (f"trainer ≈ {est.trainer / GIB:.1f} GiB (state {est.state / GIB:.1f} + activations "
         f"{est.activations / GIB:.1f}, allocator slack and context)")
    if est.server:
        s += f" + SGLang ≈ {est.server / GIB:.1f} GiB"
    return s + f" = {est.total / GIB:.1f} of {card_bytes / GIB:.1f} GiB"


def cpu_refusal(cfg, engine: str, on_gpu: bool, params: int) -> str | None:
    """Why `grpo train` refuses this model on a CPU host (None when it does not): the CPU engine
    would take hours, unless rollout.engine=hf was asked for explicitly."""
    if engine != "hf" or on_gpu or cfg.rollout.engine != "auto" or params <= cfg.model.max_params_on_cpu:
        return None
    return (f"model {cfg.model.path} has {params / 1e6:.0f}M parameters and no GPU is visible: the CPU engine "
            f"would take hours (model.max_params_on_cpu={cfg.model.max_params_on_cpu})")


_UNITS = {"": GIB, "g": GIB, "gb": 10**9, "gib": GIB, "m": 1024**2, "mb": 10**6, "mib": 1024**2,
          "t": 1024**4, "tb": 10**12, "tib": 1024**4}


def parse_size(text: str) -> int:
    """'12GiB', '12 GB', '12g', '24576MiB' or a bare number of GiB -> bytes; ValueError if unreadable."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text or "")
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS or float(m.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a memory size (e.g. 12GiB, 16GB, 24576MiB)")
    return int(float(m.group(1)) * _UNITS[unit])


def card_plan(mc: dict, cfg, card_bytes: float, engine: str) -> tuple[str, list[str], Estimate, object]:
    """The plan `grpo train` would make on one card of card_bytes that holds the trainer and, with
    SGLang, the server: (verdict(), the settings fit() changes, the estimate after them, the fitted cfg)."""
    fitted, changes, est = fit(mc, cfg, card_bytes, shared=engine == "sglang", trainer_gpus=1,
                               bf16=cfg.trainer.dtype != "fp32")
    return verdict(est, card_bytes, hf_engine_bytes(est.params, cfg, engine)), changes, est, fitted


def hf_engine_bytes(params: int, cfg, engine: str) -> int:
    """The HF engine's own copy of the weights on the trainer's GPU (in the trainer's dtype); 0 for SGLang."""
    return params * (4 if cfg.trainer.dtype == "fp32" else 2) if engine == "hf" else 0
