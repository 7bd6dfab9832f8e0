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

from gsm8k_grpo import reward as R
from gsm8k_grpo.data import prompts as P
from gsm8k_grpo.data.gsm8k import Problem
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
    prompts = [P.encode(tokenizer, p.question, instruction, system_prompt) for p in problems]
    params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                            stop_token_ids=tuple(stop_token_ids), seed=seed)
    t0 = time.time()
    groups = engine.generate(prompts, params)
    seconds = time.time() - t0
    rows, strict_sum, lenient_sum, any_strict, any_lenient, toks, trunc = [], 0.0, 0.0, 0, 0, 0, 0
    for prob, group in zip(problems, groups):
        s_ok, l_ok = [], []
        for k, c in enumerate(group):
            text = tokenizer.decode(c.token_ids, skip_special_tokens=True)
            s = R.score(text, prob.gold, "strict")
            lenient = R.extract_answer(text, "lenient")
            s_ok.append(s.correct)
            l_ok.append(R.answers_match(lenient, prob.gold))
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
    for key in ("strict", "lenient"):
        lo, hi = summary[f"{key}_ci95"]
        t.add_row(f"{key} accuracy", f"{100 * summary[f'{key}_accuracy']:.1f} %  (95 % CI {100 * lo:.1f}-{100 * hi:.1f})")
        if f"{key}_pass@{summary['samples_per_question']}" in summary:
            t.add_row(f"{key} pass@{summary['samples_per_question']}",
                      f"{100 * summary[f'{key}_pass@{summary['samples_per_question']}']:.1f} %")
    t.add_row("questions", str(summary["questions"]))
    t.add_row("mean response tokens", f"{summary['mean_response_tokens']:.1f}")
    t.add_row("truncated", f"{100 * summary['truncated_rate']:.1f} %")
    t.add_row("wall time", f"{summary['seconds']:.1f} s  ({summary['questions_per_s']:.1f} questions/s, "
                           f"{summary['output_tokens_per_s']:.0f} tok/s)")
    console.print(t)
