"""Write the learning report (issue 7): the untrained model vs the trained checkpoint on GSM8K test.

    python bench/device/learn/report.py --in DIR [--in DIR ...] [--preset NAME] [--out DIR]

Each input is looked up by name in the --in dirs, first hit wins (final.sh passes $OUT, /tmp/learn and
the run dir; on the CPU machine pass the folders the device commands' files were fetched into):

    baseline.json  baseline_rows.jsonl    grpo eval --model BASE --all --json / --output   (baseline.sh)
    final.json     final_rows.jsonl       grpo eval --checkpoint CKPT --all ...            (final.sh)
    metrics.jsonl                         RUN_DIR/metrics.jsonl, one record per step       (train.sh)
    train_chunks.jsonl                    one line per train.sh call: rc, wall_s, steps    (train.sh)
    speed_sglang.json  speed_hf.json      the first 128 questions with each engine         (baseline.sh)

Writes OUT/learning.md and OUT/curves.png (reward/accuracy and response-length curves). Standard
library only, plus matplotlib for the image when it is installed. Any input may be missing or broken:
the report then says what is missing and leaves that part out. Nothing here invents a number.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "src"))
from gsm8k_grpo.eval import wilson  # noqa: E402  (one Wilson interval for eval and report)

NAMES = ("baseline.json", "baseline_rows.jsonl", "final.json", "final_rows.jsonl", "metrics.jsonl",
         "train_chunks.jsonl", "speed_sglang.json", "speed_hf.json")
EVAL_SLICE = 200          # the presets' eval.samples: in-training evals use the first 200 test questions
SHOW_CHARS = 1500         # completions longer than this are cut in the examples


# ----------------------------------------------------------------------------- reading
def find(dirs: list[Path], name: str) -> Path | None:
    """The first dir's NAME, or NAME.gz (the per-question rows are kept gzipped in bench/results)."""
    return next((d / n for d in dirs for n in (name, name + ".gz") if (d / n).is_file()), None)


def read_json(path: Path | None, notes: list[str]) -> dict | None:
    """A `grpo eval --json` summary; tolerates log lines printed before the JSON object."""
    if path is None:
        return None
    try:
        text = path.read_text()
        start = text.find("{")
        d = json.loads(text[start:]) if start >= 0 else None
    except (OSError, ValueError) as e:
        notes.append(f"{path}: not readable as JSON ({type(e).__name__}); see the .log beside it")
        return None
    if not isinstance(d, dict) or ("strict_accuracy" not in d and "rc" not in d):
        notes.append(f"{path}: no eval summary in it")
        return None
    if "strict_accuracy" not in d:
        notes.append(f"{path}: the eval failed (rc={d.get('rc')}); see the .log beside it")
        return None
    return d


def read_jsonl(path: Path | None, notes: list[str]) -> list[dict] | None:
    if path is None:
        return None
    out, bad = [], 0
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        lines = raw.decode().splitlines()
    except (OSError, EOFError, UnicodeDecodeError) as e:
        notes.append(f"{path}: unreadable ({e})")
        return None
    for line in lines:
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(rec, dict):
            out.append(rec)
        else:
            bad += 1
    if bad:
        notes.append(f"{path}: skipped {bad} unreadable line(s)")
    return out or None


# ----------------------------------------------------------------------------- statistics
def per_question(rows: list[dict] | None) -> dict[int, dict]:
    """idx -> {strict, lenient (means over samples), tokens, truncated, has_answer, first row}."""
    if not rows:
        return {}
    groups: dict[int, list[dict]] = {}
    for r in rows:
        if "idx" in r:
            groups.setdefault(int(r["idx"]), []).append(r)
    out = {}
    for idx, g in groups.items():
        g.sort(key=lambda r: r.get("sample", 0))
        n = len(g)
        out[idx] = {
            "strict": sum(bool(r.get("correct")) for r in g) / n,
            "lenient": sum(bool(r.get("correct_lenient")) for r in g) / n,
            "tokens": sum(r.get("tokens", 0) for r in g) / n,
            "truncated": sum(r.get("finish_reason") == "length" for r in g) / n,
            "has_answer": sum(r.get("extracted") is not None for r in g) / n,
            "row": g[0],
        }
    return out


def baseline_questions(folder: Path, notes: list[str], prog: str) -> dict[int, dict] | None:
    """per_question() of folder/baseline_rows.jsonl(.gz), or None after saying on stderr that there is none."""
    base = per_question(read_jsonl(find([folder], "baseline_rows.jsonl"), notes))
    if not base:
        print(f"{prog}: no baseline rows under {folder}", file=sys.stderr)
        return None
    return base


def rows_summary(q: dict[int, dict], only: set[int] | None = None) -> dict | None:
    keys = sorted(q if only is None else set(q) & only)
    if not keys:
        return None
    n = len(keys)
    s = sum(q[i]["strict"] for i in keys)
    length = sum(q[i]["lenient"] for i in keys)
    return {"questions": n, "strict_accuracy": s / n, "strict_ci95": wilson(s, n),
            "lenient_accuracy": length / n, "lenient_ci95": wilson(length, n),
            "mean_response_tokens": sum(q[i]["tokens"] for i in keys) / n,
            "truncated_rate": sum(q[i]["truncated"] for i in keys) / n,
            "answer_rate": sum(q[i]["has_answer"] for i in keys) / n}


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar test (binomial on the discordant pairs)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, 2 * tail / 2 ** n)


def paired(base: dict[int, dict], fin: dict[int, dict], key: str) -> dict | None:
    """Paired comparison on the questions both evals scored (greedy: one sample each)."""
    common = sorted(set(base) & set(fin))
    n = len(common)
    if n == 0:
        return None
    d = [fin[i][key] - base[i][key] for i in common]
    mean = sum(d) / n
    sd = statistics.pstdev(d) if n > 1 else 0.0
    se = sd / math.sqrt(n)
    b = sum(1 for i in common if base[i][key] < 0.5 <= fin[i][key])   # fixed by training
    c = sum(1 for i in common if fin[i][key] < 0.5 <= base[i][key])   # broken by training
    return {"n": n, "delta": mean, "ci95": (mean - 1.96 * se, mean + 1.96 * se), "fixed": b, "broken": c,
            "p": mcnemar_p(b, c)}


# ----------------------------------------------------------------------------- formatting
def pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f} %"


def acc_ci(s: dict | None, key: str) -> str:
    if not s or f"{key}_accuracy" not in s:
        return "–"
    lo, hi = s.get(f"{key}_ci95") or (None, None)
    ci = f" ({100 * lo:.1f}–{100 * hi:.1f})" if lo is not None else ""
    return f"**{100 * s[f'{key}_accuracy']:.1f} %**{ci}"


def num(x, fmt: str = "{:.1f}", none: str = "–") -> str:
    return none if x is None else fmt.format(x)


def fence(text: str) -> str:
    run, longest = 0, 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    f = "`" * max(3, longest + 1)
    return f"{f}text\n{text}\n{f}"


def cut(text: str, n: int = SHOW_CHARS) -> str:
    text = text or ""
    return text if len(text) <= n else text[:n] + f"\n[… {len(text) - n} more characters cut]"


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def series(metrics: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in metrics if isinstance(r.get(key), (int, float)) and "step" in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def moving(xs: list[float], w: int = 5) -> list[float]:
    return [sum(xs[max(0, i - w + 1):i + 1]) / len(xs[max(0, i - w + 1):i + 1]) for i in range(len(xs))]


# ----------------------------------------------------------------------------- the image
def draw(metrics: list[dict] | None, slice_points: list[tuple[int, float, str]], out: Path,
         base_len: float | None, final_len: float | None, title: str, notes: list[str],
         final_point: tuple[int, float] | None = None) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        notes.append("curves.png not drawn: matplotlib is not installed here; re-run report.py where it is")
        return False
    try:
        _draw(plt, metrics or [], slice_points, out, base_len, final_len, title, final_point)
        return True
    except Exception as e:  # noqa: BLE001  (a plotting problem must not cost the report)
        notes.append(f"curves.png not drawn: {type(e).__name__}: {e}")
        plt.close("all")
        return False


def _draw(plt, metrics, slice_points, out, base_len, final_len, title, final_point) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    ax1, ax2, ax3 = axes
    st, rw = series(metrics, "reward_mean")
    if st:
        ax1.plot(st, rw, color="tab:blue", alpha=0.35, lw=1, label="train reward (mean over the step's samples)")
        ax1.plot(st, moving(rw), color="tab:blue", lw=2, label="train reward, 5-step mean")
    sa, ac = series(metrics, "accuracy")
    if sa and ac != rw:
        ax1.plot(sa, moving(ac), color="tab:cyan", lw=1.2, ls="--", label="train accuracy, 5-step mean")
    if slice_points:
        xs, ys, _ = zip(*sorted(slice_points))
        ax1.plot(xs, ys, "o-", color="tab:red", label=f"greedy eval, first {EVAL_SLICE} test questions")
    if final_point:
        ax1.plot(*final_point, "*", color="black", ms=11, label="final.sh on the checkpoint, same questions")
    ax1.set(xlabel="step", ylabel="strict reward / accuracy", ylim=(-0.02, 1.02), title="reward and accuracy")
    ax1.grid(alpha=0.3)
    if st or slice_points:
        ax1.legend(fontsize=7, loc="upper left")

    sl, ln = series(metrics, "response_len_mean")
    if sl:
        ax2.plot(sl, ln, color="tab:purple", alpha=0.35, lw=1, label="train samples, mean tokens")
        ax2.plot(sl, moving(ln), color="tab:purple", lw=2, label="5-step mean")
    se, el = series(metrics, "eval_response_len")
    if se:
        ax2.plot(se, el, "o", color="tab:red", label="greedy eval (200 test q)")
    if base_len is not None:
        ax2.axhline(base_len, color="gray", ls=":", label=f"baseline, full test: {base_len:.0f}")
    if final_len is not None:
        ax2.axhline(final_len, color="black", ls="--", lw=1, label=f"trained, full test: {final_len:.0f}")
    ax2.set(xlabel="step", ylabel="tokens", title="response length")
    ax2.grid(alpha=0.3)
    if sl or se or base_len is not None:
        ax2.legend(fontsize=7)

    for key, label, color in (("truncated_frac", "truncated at max_new_tokens", "tab:orange"),
                              ("filtered_group_frac", "groups filtered (no reward variance)", "tab:green"),
                              ("format_rate", "samples with a \\boxed{} answer", "tab:gray")):
        s, v = series(metrics, key)
        if s:
            ax3.plot(s, moving(v), color=color, lw=1.5, label=label + ", 5-step mean")
    ax3.set(xlabel="step", ylabel="fraction", ylim=(-0.02, 1.02), title="rollout health")
    ax3.grid(alpha=0.3)
    if metrics:
        ax3.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    shrink_png(out)


def shrink_png(path: Path) -> None:
    """Re-save a line plot with a 256-colour palette: a third of the size, no visible change. The
    results live in the repo, and the repo travels in every device call, whose carry is 64 MiB in all."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            q = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        q.save(path, optimize=True)
    except Exception as e:  # Pillow missing or an odd file: keep the full-colour plot
        print(f"shrink_png: kept {path} as drawn ({type(e).__name__})")


# ----------------------------------------------------------------------------- the report
def build(dirs: list[Path], preset: str | None, out_dir: Path) -> Path:
    notes: list[str] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {n: find(dirs, n) for n in NAMES}
    base = read_json(paths["baseline.json"], notes)
    fin = read_json(paths["final.json"], notes)
    base_rows = read_jsonl(paths["baseline_rows.jsonl"], notes)
    fin_rows = read_jsonl(paths["final_rows.jsonl"], notes)
    metrics = read_jsonl(paths["metrics.jsonl"], notes)
    chunks = read_jsonl(paths["train_chunks.jsonl"], notes)
    speed = {e: read_json(paths[f"speed_{e}.json"], notes) for e in ("sglang", "hf")}
    if metrics:
        metrics.sort(key=lambda r: r.get("step", 0))
    bq, fq = per_question(base_rows), per_question(fin_rows)
    # rows are the ground truth when present; the JSON summary otherwise
    bsum = rows_summary(bq) or base
    fsum = rows_summary(fq) or fin
    if bsum and base:
        bsum = {**base, **bsum}
    if fsum and fin:
        fsum = {**fin, **fsum}
    preset = preset or (fin or {}).get("preset") or (chunks[-1].get("preset") if chunks else None) or "?"
    if chunks and preset != "?":  # /tmp/learn/train_chunks.jsonl holds every preset trained in the hold
        chunks = [c for c in chunks if c.get("preset") in (preset, None)] or None
    step = (fin or {}).get("checkpoint_step") or (metrics[-1].get("step") if metrics else None)
    if metrics and (fin or {}).get("checkpoint_step"):
        extra = [r for r in metrics if r.get("step", 0) > step]
        if extra:  # a train.sh call cut by its timeout logged steps that no checkpoint holds
            notes.append(f"metrics.jsonl: dropped {len(extra)} record(s) after step {step}, the evaluated "
                         "checkpoint (logged by a call cut by its timeout; a resume would redo them)")
            metrics = [r for r in metrics if r.get("step", 0) <= step] or None

    L: list[str] = []
    L.append(f"# Does GRPO learn on real weights? `{preset}` preset, Qwen2.5-Coder-0.5B-Instruct")
    L.append("")
    used = ", ".join(f"`{p}`" for p in paths.values() if p) or "no inputs at all"
    L.append(f"Generated by `bench/device/learn/report.py` on {time.strftime('%Y-%m-%d %H:%M:%S')} from {used}.")
    L.append("")
    L.append("Model: Qwen2.5-Coder-0.5B-Instruct, dequantised from a Q4_K_M GGUF to bf16 (630 M params, "
             "untied lm_head; see shared/models/README.md), not Qwen2.5-0.5B-Instruct. Both evals: greedy, "
             "512 new tokens, the training prompt and reward code, SGLang engine unless the table says otherwise.")
    if (base or {}).get("model") or (fin or {}).get("model"):
        L.append(f"Baseline model `{(base or {}).get('model', '?')}`; trained checkpoint `{(fin or {}).get('model', '?')}`.")
    L.append("")

    # --- headline
    L.append("## Result: GSM8K test, before and after training")
    L.append("")
    if bsum or fsum:
        label = f"trained (step {step})" if step else "trained"
        L.append(f"| | baseline | {label} | change |")
        L.append("|---|---|---|---|")
        ps, pl = paired(bq, fq, "strict"), paired(bq, fq, "lenient")

        def delta(p, key):
            if p:
                lo, hi = p["ci95"]
                return f"**{100 * p['delta']:+.1f} points** ({100 * lo:+.1f} to {100 * hi:+.1f}, paired)"
            if bsum and fsum and key in bsum and key in fsum:
                return f"{100 * (fsum[key] - bsum[key]):+.1f} points (no rows: unpaired)"
            return "–"
        L.append(f"| strict accuracy (95 % CI) | {acc_ci(bsum, 'strict')} | {acc_ci(fsum, 'strict')} | "
                 f"{delta(ps, 'strict_accuracy')} |")
        L.append(f"| lenient accuracy (95 % CI) | {acc_ci(bsum, 'lenient')} | {acc_ci(fsum, 'lenient')} | "
                 f"{delta(pl, 'lenient_accuracy')} |")
        for key, name, fmt in (("questions", "questions", "{:.0f}"),
                               ("mean_response_tokens", "mean response tokens", "{:.1f}"),
                               ("truncated_rate", "truncated at 512 tokens", None),
                               ("answer_rate", "with a strict answer (\\boxed{} / ####)", None),
                               ("seconds", "generation time", "{:.1f} s"),
                               ("output_tokens_per_s", "output tok/s", "{:.0f}"),
                               ("wall_s", "command wall time (incl. server start)", "{:.0f} s"),
                               ("engine", "engine", "{}")):
            bv, fv = (bsum or {}).get(key), (fsum or {}).get(key)
            if bv is None and fv is None:
                continue
            f = (lambda v: pct(v)) if fmt is None else (lambda v, fmt=fmt: num(v, fmt))
            L.append(f"| {name} | {f(bv)} | {f(fv)} | |")
        L.append("")
        if ps:
            verdict = ("**Training raised strict accuracy: the 95 % CI of the paired change excludes 0.**"
                       if ps["ci95"][0] > 0 else
                       "**Training lowered strict accuracy: the 95 % CI of the paired change excludes 0.**"
                       if ps["ci95"][1] < 0 else
                       "**No significant change in strict accuracy: the 95 % CI of the paired change includes 0.**")
            L.append(f"{verdict} On the {ps['n']} questions both evals scored, training fixed {ps['fixed']} "
                     f"(baseline wrong, trained right) and broke {ps['broken']}; exact McNemar p = {ps['p']:.2g}.")
            L.append("")
        elif bsum and fsum:
            L.append("Per-question rows are missing on one side, so no paired test; compare the Wilson CIs.")
            L.append("")
    else:
        L.append("No eval summary was found (baseline.json / final.json and their rows are all missing).")
        L.append("")

    # --- training
    L.append("## Training")
    L.append("")
    if chunks:
        L.append("| call | mode | max_steps | checkpoint before → after | rc | timed out | wall |")
        L.append("|---|---|---|---|---|---|---|")
        for i, c in enumerate(chunks, 1):
            L.append(f"| {i} | {c.get('mode', '?')} | {c.get('max_steps', '?')} | {c.get('ckpt_before', '?')} → "
                     f"{c.get('ckpt_after', '?')} | {c.get('rc', '?')} | {c.get('timed_out', '?')} | "
                     f"{num(c.get('wall_s'), '{:.0f} s')} |")
        total = sum(c.get("wall_s", 0) for c in chunks)
        L.append("")
        L.append(f"train.sh wall time in all: **{total:.0f} s ({total / 60:.1f} min)** over {len(chunks)} call(s), "
                 "each including its SGLang start, model load and checkpoint saves.")
        L.append("")
    if metrics:
        steps = [r for r in metrics if "time_step" in r]
        ts = [r["time_step"] for r in steps]
        first, last = metrics[0].get("step"), metrics[-1].get("step")

        def msum(k):
            return sum(r.get(k, 0) or 0 for r in metrics)
        L.append(f"Steps {first}–{last} ({len(metrics)} records). Step time median {num(median(ts), '{:.2f} s')} "
                 f"(min {num(min(ts) if ts else None, '{:.2f}')}, max {num(max(ts) if ts else None, '{:.2f}')}); "
                 f"sum of step times {msum('time_step'):.0f} s, evals {msum('time_eval'):.0f} s, "
                 f"checkpoint saves {msum('time_save'):.0f} s.")
        meds = {k: median([r[k] for r in metrics if isinstance(r.get(k), (int, float))])
                for k in ("time_generate", "time_update", "time_push", "samples_trained", "grad_norm",
                          "filtered_group_frac", "peak_mem_gb", "gen_tokens_per_s")}
        L.append(f"Medians per step: generate {num(meds['time_generate'], '{:.2f} s')}, update "
                 f"{num(meds['time_update'], '{:.2f} s')}, push {num(meds['time_push'], '{:.3f} s')}, samples trained "
                 f"{num(meds['samples_trained'], '{:.0f}')}, groups filtered {pct(meds['filtered_group_frac'], 0)}, "
                 f"grad norm {num(meds['grad_norm'], '{:.3f}')}, generation {num(meds['gen_tokens_per_s'], '{:.0f}')} tok/s, "
                 f"peak trainer memory {num(meds['peak_mem_gb'], '{:.1f} GiB')}.")
        stale = msum("stale_samples")
        nonfinite = msum("nonfinite_steps")
        L.append(f"Stale samples (generated on old weights): {stale:.0f}; non-finite optimizer steps skipped: "
                 f"{nonfinite:.0f}.")
        L.append("")
        # compact curve table: about 13 rows
        k = max(1, len(metrics) // 12)
        rows = [r for i, r in enumerate(metrics) if i % k == 0 or i == len(metrics) - 1 or "eval_accuracy" in r]
        L.append("| step | train reward | train acc (5-step mean) | mean tokens | truncated | groups filtered | eval acc (200 q) |")
        L.append("|---|---|---|---|---|---|---|")
        accs = moving([r.get("accuracy", 0) or 0 for r in metrics])
        pos = {id(r): i for i, r in enumerate(metrics)}
        for r in rows:
            ev = pct(r["eval_accuracy"]) if "eval_accuracy" in r else ""
            L.append(f"| {r.get('step')} | {num(r.get('reward_mean'), '{:.3f}')} | {pct(accs[pos[id(r)]])} | "
                     f"{num(r.get('response_len_mean'), '{:.0f}')} | {pct(r.get('truncated_frac'))} | "
                     f"{pct(r.get('filtered_group_frac'), 0)} | {ev} |")
        L.append("")
    elif not chunks:
        L.append("No metrics.jsonl and no train_chunks.jsonl: the training part is missing.")
        L.append("")

    # --- in-training evals on the first 200 test questions (same slice: comparable points)
    slice_ids = set(range(EVAL_SLICE))
    slice_points: list[tuple[int, float, str]] = []
    b200 = rows_summary(bq, slice_ids)
    if b200 and b200["questions"] == EVAL_SLICE:
        slice_points.append((0, b200["strict_accuracy"], "baseline rows"))
    for r in metrics or []:
        if "eval_accuracy" in r:
            slice_points.append((r["step"], r["eval_accuracy"], "in-training eval"))
    f200 = rows_summary(fq, slice_ids)
    if slice_points or f200:
        L.append(f"### Greedy accuracy on the first {EVAL_SLICE} test questions along the run")
        L.append("")
        L.append("| step | strict accuracy | source |")
        L.append("|---|---|---|")
        for s, a, src in sorted(slice_points):
            L.append(f"| {s} | {pct(a)} | {src} |")
        if f200 and f200["questions"] == EVAL_SLICE:
            L.append(f"| {step or '?'} | {pct(f200['strict_accuracy'])} | final.sh rows (exported checkpoint, fresh server) |")
        L.append("")
        L.append("The in-training evals run on the live server after the weight pushes; the final.sh row "
                 "reloads the exported bf16 checkpoint. At the last step the two should agree to within "
                 "batch nondeterminism (a point or two).")
        L.append("")

    png = out_dir / "curves.png"
    title = f"{preset}: GRPO on Qwen2.5-Coder-0.5B-Instruct (GSM8K)"
    drawn = draw(metrics, slice_points, png, (bsum or {}).get("mean_response_tokens"),
                 (fsum or {}).get("mean_response_tokens"), title, notes,
                 (step, f200["strict_accuracy"]) if (f200 and step and f200["questions"] == EVAL_SLICE) else None
                 ) if (metrics or slice_points) else False
    if drawn:
        L.append("![reward, accuracy and response length per step](curves.png)")
        L.append("")
        L.append("Left: mean strict reward of each step's training samples (thin) and its 5-step mean; red: "
                 f"greedy eval on the first {EVAL_SLICE} test questions (step 0 = the baseline's rows). Middle: "
                 "mean response length of the training samples and of the evals. Right: truncation, groups "
                 "dropped for zero reward variance, and the \\boxed{} format rate.")
        L.append("")

    # --- speed
    if any(speed.values()):
        L.append("## Speed: in-process HF engine vs SGLang (same questions, greedy, 512 new tokens)")
        L.append("")
        L.append("| engine | questions | generation | output tok/s | wall (incl. load / server start) | strict acc |")
        L.append("|---|---|---|---|---|---|")
        for e in ("hf", "sglang"):
            s = speed[e]
            if s:
                L.append(f"| {s.get('engine', e)} | {s.get('questions')} | {num(s.get('seconds'), '{:.1f} s')} | "
                         f"{num(s.get('output_tokens_per_s'), '{:.0f}')} | {num(s.get('wall_s'), '{:.0f} s')} | "
                         f"{pct(s.get('strict_accuracy'))} |")
            else:
                L.append(f"| {e} | – | missing | | | |")
        if speed["hf"] and speed["sglang"] and speed["hf"].get("seconds") and speed["sglang"].get("seconds"):
            L.append("")
            L.append(f"SGLang generates {speed['hf']['seconds'] / speed['sglang']['seconds']:.1f}× faster than "
                     "the HF engine on these questions (generation time only).")
        L.append("")

    # --- examples
    L.append("## Before and after: the same questions")
    L.append("")
    common = sorted(set(bq) & set(fq))
    if common:
        fixed = [i for i in common if fq[i]["strict"] >= 0.5 > bq[i]["strict"]]
        both = [i for i in common if fq[i]["strict"] >= 0.5 and bq[i]["strict"] >= 0.5]
        rest = [i for i in common if i not in fixed and i not in both]
        pick = (fixed + both + rest)[:3]
        L.append(f"Chosen: the first questions (by test index) that the trained model answers correctly and the "
                 f"baseline does not ({len(fixed)} such questions); when there are fewer than 3, then questions "
                 "both answer correctly, then the rest.")
        L.append("")
        for i in pick:
            b, f = bq[i]["row"], fq[i]["row"]
            L.append(f"### Test question {i} (gold {b.get('gold')})")
            L.append("")
            L.append(fence(cut(b.get("question", ""), 1200)))
            L.append("")
            for who, r, q in (("Baseline", b, bq[i]), (f"Trained (step {step or '?'})", f, fq[i])):
                verdict = "correct" if q["strict"] >= 0.5 else "wrong"
                L.append(f"**{who}**: extracted `{r.get('extracted')}`, {verdict}, {r.get('tokens', '?')} tokens, "
                         f"finish `{r.get('finish_reason')}`")
                L.append("")
                L.append(fence(cut(r.get("completion", ""))))
                L.append("")
    else:
        L.append("Not available: needs both baseline_rows.jsonl and final_rows.jsonl.")
        L.append("")

    # --- what is missing
    missing = [n for n, p in paths.items() if p is None]
    if missing or notes:
        L.append("## Missing or unreadable inputs")
        L.append("")
        for n in missing:
            L.append(f"- `{n}` not found in: " + ", ".join(f"`{d}`" for d in dirs))
        for n in notes:
            L.append(f"- {n}")
        L.append("")

    md = out_dir / "learning.md"
    md.write_text("\n".join(L))
    return md


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--in", dest="dirs", action="append", default=[], type=Path,
                    help="a folder to look for the inputs in (repeatable; first hit wins)")
    ap.add_argument("--preset", default=None)
    ap.add_argument("--out", type=Path, default=Path("."))
    a = ap.parse_args(argv)
    dirs = a.dirs or [Path(".")]
    md = build(dirs, a.preset, a.out)
    print(f"wrote {md}" + (f" and {a.out / 'curves.png'}" if (a.out / "curves.png").is_file() else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
