"""GSM8K evaluation: rollout + reward, no optimizer. ``grpo eval`` and the periodic eval in training
both call ``evaluate``, with the training prompt and the training reward code.

Accuracy is reported strict (last \\boxed{} / '#### N' / 'the answer is N') and lenient (strict, else
the last number), as pass@1 = the mean over K samples per question, with a 95 % Wilson interval;
pass@K counts a question solved when any of its K samples is.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from gsm8k_grpo import reward
from gsm8k_grpo.data import prompts
from gsm8k_grpo.data.gsm8k import Problem
from gsm8k_grpo.errors import InputError
from gsm8k_grpo.rollout.base import Engine, SamplingParams


def wilson(correct: float, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 0.0
    p = correct / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


@dataclass
class EvalResult:
    summary: dict
    rows: list[dict] = field(default_factory=list)


def evaluate(engine: Engine, tokenizer, problems: list[Problem], *, instruction: str, system_prompt: str | None,
             max_new_tokens: int, stop_token_ids: list[int], temperature: float = 0.0, n: int = 1,
             top_p: float = 1.0, seed: int = 0) -> EvalResult:
    encoded = [prompts.encode(tokenizer, p.question, instruction, system_prompt) for p in problems]
    params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                            stop_token_ids=tuple(stop_token_ids), seed=seed)
    t0 = time.time()
    groups = engine.generate(encoded, params)
    seconds = time.time() - t0
    rows, strict_sum, lenient_sum, any_strict, any_lenient, toks, trunc = [], 0.0, 0.0, 0, 0, 0, 0
    for prob, group in zip(problems, groups):
        s_ok, l_ok = [], []
        for k, c in enumerate(group):
            text = tokenizer.decode(c.token_ids, skip_special_tokens=True)
            s = reward.score(text, prob.gold, "strict")
            lenient = reward.extract_answer(text, "lenient")
            s_ok.append(s.correct)
            l_ok.append(reward.answers_match(lenient, prob.gold))
            toks += len(c.token_ids)
            trunc += c.finish_reason == "length"
            rows.append({"idx": prob.idx, "sample": k, "question": prob.question, "gold": prob.gold,
                         "completion": text, "extracted": s.extracted, "extracted_lenient": lenient,
                         "correct": s.correct, "correct_lenient": l_ok[-1], "tokens": len(c.token_ids),
                         "finish_reason": c.finish_reason})
        strict_sum += sum(s_ok) / len(group)
        lenient_sum += sum(l_ok) / len(group)
        any_strict += any(s_ok)
        any_lenient += any(l_ok)
    q = len(problems)
    n_samples = max(1, len(rows))
    summary = {
        "questions": q, "samples_per_question": n, "temperature": temperature,
        "strict_accuracy": strict_sum / q, "strict_ci95": wilson(strict_sum, q),
        "lenient_accuracy": lenient_sum / q, "lenient_ci95": wilson(lenient_sum, q),
        "mean_response_tokens": toks / n_samples, "truncated_rate": trunc / n_samples,
        "seconds": seconds, "questions_per_s": q / max(seconds, 1e-9), "output_tokens_per_s": toks / max(seconds, 1e-9),
    }
    if n > 1:
        summary.update({f"strict_pass@{n}": any_strict / q, f"lenient_pass@{n}": any_lenient / q})
    return EvalResult(summary, rows)


def write_rows(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def render(summary: dict, console, title: str = "GSM8K eval") -> None:
    from rich.table import Table

    t = Table(title=title)
    t.add_column("metric")
    t.add_column("value", justify="right")
    k = summary["samples_per_question"]
    for key in ("strict", "lenient"):
        lo, hi = summary[f"{key}_ci95"]
        acc = 100 * summary[f"{key}_accuracy"]
        t.add_row(f"{key} accuracy", f"{acc:.1f} %  (95 % CI {100 * lo:.1f}-{100 * hi:.1f})")
        if f"{key}_pass@{k}" in summary:
            t.add_row(f"{key} pass@{k}", f"{100 * summary[f'{key}_pass@{k}']:.1f} %")
    t.add_row("questions", str(summary["questions"]))
    t.add_row("mean response tokens", f"{summary['mean_response_tokens']:.1f}")
    t.add_row("truncated", f"{100 * summary['truncated_rate']:.1f} %")
    t.add_row("wall time", f"{summary['seconds']:.1f} s  ({summary['questions_per_s']:.1f} questions/s, "
                           f"{summary['output_tokens_per_s']:.0f} tok/s)")
    console.print(t)


def check_model_dir(path: Path) -> Path:
    """A model dir written by training (or any HF dir); point at the right one when it is not."""
    from gsm8k_grpo.modeling import is_model_dir
    from gsm8k_grpo.run_dir import RunDir

    if not path.exists():
        raise InputError(f"checkpoint {path} does not exist")
    if path.is_dir() and (path / "model").is_dir() and (path / "state.json").is_file():
        return check_model_dir(path / "model")  # a checkpoint dir: its model/ is what we serve
    if path.is_dir() and (path / "checkpoints").is_dir():
        found = RunDir(path).latest_checkpoint()
        hint = f"; use {found / 'model'}" if found else ""
        raise InputError(f"{path} is a run dir, not a model dir{hint}")
    if path.is_dir() and path.name == "trainer" and (path / ".metadata").is_file():
        raise InputError(f"{path} is the trainer state (optimizer), not a model; use {path.parent / 'model'}")
    if path.is_dir() and (path / "adapter_config.json").is_file() and not is_model_dir(path):
        merged = path.parent / "model"
        raise InputError(f"{path} is a LoRA adapter, not a model" + (f"; use {merged} (the merged model)"
                         if is_model_dir(merged) else "; merge it into its base model with peft first"))
    if not path.is_dir() or not is_model_dir(path):
        raise InputError(f"{path} is not a model dir (needs config.json and *.safetensors)")
    try:
        json.loads((path / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InputError(f"{path}/config.json is corrupt (not valid JSON)") from None
    return path


def checkpoint_run_config(model_dir: Path):
    """The run config kept beside a checkpoint's model dir (its state.json), or None."""
    from gsm8k_grpo.config import ConfigError, validate_config
    from gsm8k_grpo.run_dir import read_state

    if model_dir.name != "model" or not (model_dir.parent / "state.json").is_file():
        return None
    try:
        return validate_config(read_state(model_dir.parent).get("config") or {})
    except (InputError, ConfigError):
        return None


def check_output(output: Path) -> None:
    """Refuse an --output that cannot be written before the evaluation runs, not after."""
    if output.is_dir():
        raise InputError(f"--output {output} is a directory; give a file path (e.g. {output / 'eval.jsonl'})")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        with open(output, "a"):
            pass
    except OSError as e:
        raise InputError(f"--output {output} cannot be written ({e.strerror or type(e).__name__})") from None


def run_cli(*, checkpoint: Path | None, model: str | None, samples: int | None, all_: bool, seed: int | None,
            engine: str, temperature: float, n: int, max_new_tokens: int, data_path: str | None,
            output: Path | None, config: Path | None, console) -> dict:
    """`grpo eval`: check the input, resolve the model, pick the engine, evaluate, print / write the results.

    Prompt and data settings come from --config, else from the run config kept with a training
    checkpoint, else the defaults; --data wins over all of them."""
    import random
    import tempfile

    from gsm8k_grpo.config import RunConfig, build_config
    from gsm8k_grpo.data.gsm8k import load_split
    from gsm8k_grpo.data.prompts import stop_token_ids
    from gsm8k_grpo.modeling import load_generation_config, load_tokenizer, resolve_model_dir
    from gsm8k_grpo.rollout import choose_engine, make_engine

    if (checkpoint is None) == (model is None):
        raise InputError("give exactly one of --checkpoint PATH or --model NAME_OR_DIR")
    if samples is not None and all_:
        raise InputError("--samples and --all exclude each other")
    if samples is not None and samples < 1:
        raise InputError("--samples must be >= 1")
    if not (0 <= temperature < float("inf")):
        raise InputError(f"--temperature {temperature:g}: give 0 (greedy) or a positive number")
    if n < 1:
        raise InputError(f"--n {n}: give 1 or more samples per question")
    if n > 1 and temperature == 0:
        raise InputError("--n > 1 needs --temperature > 0 (greedy samples are identical)")
    if max_new_tokens < 1:
        raise InputError(f"--max-new-tokens {max_new_tokens}: give 1 or more")
    if engine not in ("auto", "sglang", "hf"):
        raise InputError(f"--engine {engine!r}; valid: auto, sglang, hf")
    if output is not None:
        check_output(output)
    model_dir = str(check_model_dir(checkpoint)) if checkpoint is not None else resolve_model_dir(model)
    cfg = build_config(config_file=config) if config else (checkpoint_run_config(Path(model_dir)) or RunConfig())
    d = cfg.data
    problems = load_split("test", data_path or d.path, d.hub_name, d.hub_config,
                          local_hint="give --data DIR, a local GSM8K dir with test.jsonl")
    if samples is not None:
        problems = random.Random(seed).sample(problems, min(samples, len(problems))) if seed is not None \
            else problems[:samples]
    tok = load_tokenizer(model_dir)
    kind = choose_engine(engine)
    rollout_cfg = cfg.rollout
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory(prefix="grpo-eval-") as tmp:
        eng = make_engine(kind, model_dir, rollout_cfg, Path(tmp), device=device, pad_token_id=tok.pad_token_id)
        try:
            res = evaluate(eng, tok, problems, instruction=d.instruction, system_prompt=d.system_prompt,
                           max_new_tokens=max_new_tokens, stop_token_ids=stop_token_ids(tok, load_generation_config(model_dir)),
                           temperature=temperature, n=n, seed=seed or 0)
        finally:
            eng.close()
    res.summary.update(model=str(checkpoint or model), engine=kind)
    if output is not None:
        write_rows(res.rows, output)
    if console is not None:
        render(res.summary, console, title=f"GSM8K test: {checkpoint or model} ({kind} engine)")
        if output is not None:
            console.print(f"per-question results: {output}", markup=False)
    return res.summary
