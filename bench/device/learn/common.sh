# Sourced by the learn/*.sh scripts AFTER bench/device/env.sh (which sets PYTHONPATH=src, the SGLang
# env, /tmp/carry and OUT). Defaults for the real-weights learning run; every one can be overridden
# from the environment (that is how the scripts are exercised on a CPU: see PLAN.md, "CPU check").
# shellcheck shell=bash

PY=${PY:-$(command -v python || command -v python3)}
LEARN_DIR=bench/device/learn
LEARN_CONFIG=${LEARN_CONFIG:-$LEARN_DIR/config.yaml}
MODEL=${MODEL:-${QWEN_CODER_DIR:-/tmp/model/qwen2.5-coder-0.5b-instruct}}
DATA=${DATA:-/tmp/carry/gsm8k}
EVAL_ENGINE=${EVAL_ENGINE:-sglang}      # grpo eval picks SGLang on a GPU anyway; explicit = fails loudly
EVAL_SET=${EVAL_SET:---all}             # e.g. EVAL_SET="--samples 20" for a CPU check
STATE=${LEARN_STATE:-/tmp/learn}        # survives between back-to-back commands (like /tmp/runs)
RUNS=$(realpath -m "${RUNS:-/tmp/runs}") # absolute and resolved: `grpo resume` compares output_dir
OUT=${OUT:-/tmp/out}
mkdir -p "$STATE" "$OUT"
# env.sh copies .carry/ to /tmp/carry with `cp --update=none` (coreutils >= 9.3); make sure the data is
# there on any machine, in the command that carries .carry
if [ ! -f /tmp/carry/gsm8k/test.jsonl ] && [ -f .carry/gsm8k/test.jsonl ]; then
  mkdir -p /tmp/carry && cp -r .carry/gsm8k /tmp/carry/
fi

# note KEY=VALUE ... into a JSON summary written by `grpo eval --json` (kept as is when unreadable)
annotate_json() {
  "$PY" - "$@" <<'PYEOF'
import json, sys
path, pairs = sys.argv[1], sys.argv[2:]
try:
    text = open(path).read()
    start = text.find("{")
    d = json.loads(text[start:]) if start >= 0 else {}
except (OSError, ValueError):
    d = None
if not isinstance(d, dict):
    print(f"annotate_json: {path} holds no JSON summary (see the .log beside it)")
    sys.exit(0)
for kv in pairs:
    k, _, v = kv.partition("=")
    try:
        d[k] = json.loads(v)
    except ValueError:
        d[k] = v
with open(path, "w") as f:
    json.dump(d, f, indent=1)
PYEOF
}

# one line of a JSON summary for the command's output
show_json() {
  "$PY" - "$1" <<'PYEOF' || true
import json, sys
try:
    t = open(sys.argv[1]).read(); d = json.loads(t[t.find("{"):])
    print(f"  {sys.argv[1]}: strict {100*d['strict_accuracy']:.1f} % lenient {100*d['lenient_accuracy']:.1f} % "
          f"on {d['questions']} q, {d['mean_response_tokens']:.0f} tok, gen {d['seconds']:.1f} s "
          f"({d['output_tokens_per_s']:.0f} tok/s), wall {d.get('wall_s', '?')} s, engine {d.get('engine')}")
except Exception as e:
    print(f"  {sys.argv[1]}: no summary ({type(e).__name__})")
PYEOF
}

# seconds left before this script's deadline (BUDGET seconds after it started)
left() { echo $((DEADLINE - SECONDS)); }

# the newest complete checkpoint's step of a run dir, or 0
ckpt_step() {
  local name
  name=$(cat "$1/checkpoints/latest" 2>/dev/null) || { echo 0; return; }
  [ -f "$1/checkpoints/$name/state.json" ] || { echo 0; return; }
  name=${name#step_}
  echo $((10#$name))
}

need_model() {
  case $MODEL in builtin:*) return 0 ;; esac   # CPU checks use the shipped tiny configs
  if [ ! -f "$MODEL/config.json" ]; then
    echo "ERROR: no model at $MODEL (source .whl/model/pNN/model-env.sh in this command or the ones before;" \
         "the last part converts the GGUF)" >&2
    return 1
  fi
}
