#!/usr/bin/env bash
# The user's path on the GPU (issue 17): the real Qwen2.5-Coder-0.5B-Instruct weights put into a Hugging
# Face cache under their hub id, then, with HF_HUB_OFFLINE=1, exactly what a user types:
#   grpo train --preset fast --set model.path=Qwen/Qwen2.5-Coder-0.5B-Instruct
#   grpo eval --checkpoint <final>/model --samples 200      (in a process whose HF cache is empty)
# plus this machine's SGLang flags and data path (bench/device/learn/config.yaml). The `fast` run is
# also the core-loop issue's real-weights check (its wall clock and step times beside the earlier ones).
# Needs the SGLang wheels and the model (/tmp/model/qwen2.5-coder-0.5b-instruct) from earlier calls.
# EXTRA_SET="key=value ..." adds --set overrides to the train command.
# Writes $OUT/hub_train.out, hub_metrics.jsonl, hub_train.log, hub_eval.json, hub_eval.log, hub_ckpt_files.txt.
source bench/device/env.sh || exit 1
MODEL_DIR=${MODEL_DIR:-/tmp/model/qwen2.5-coder-0.5b-instruct}
HUB_ID=Qwen/Qwen2.5-Coder-0.5B-Instruct
export HF_HOME=/tmp/hf HF_HUB_OFFLINE=1
[ -f "$MODEL_DIR/config.json" ] || { echo "no model at $MODEL_DIR"; exit 1; }
PYTHONPATH=tests:$PYTHONPATH python -c "
import sys; from pathlib import Path; from hf_cache import add_model
print('HF cache snapshot:', add_model(Path('$HF_HOME'), '$HUB_ID', Path('$MODEL_DIR')))"
RUNS=/tmp/runs_hub
extra=(); for kv in ${EXTRA_SET:-}; do extra+=(--set "$kv"); done   # e.g. memory caps when sharing the GPU
t0=$SECONDS
timeout -k 20 ${TRAIN_TIMEOUT:-420} python -m gsm8k_grpo train --preset fast --config bench/device/learn/config.yaml \
  --set "model.path=$HUB_ID" --set "output_dir=$RUNS" "${extra[@]}" > "$OUT/hub_train.out" 2>&1
echo "train rc=$? wall $((SECONDS - t0)) s"
tail -3 "$OUT/hub_train.out"
RUN=$RUNS/fast/trial0
cp "$RUN/metrics.jsonl" "$OUT/hub_metrics.jsonl"; cp "$RUN/train.log" "$OUT/hub_train.log"
FINAL=$(sed -n 's/^final checkpoint: //p' "$OUT/hub_train.out")
[ -n "$FINAL" ] || { echo "no final checkpoint"; exit 1; }
{ ls -la "$FINAL"; cat "$FINAL/config.json"; } > "$OUT/hub_ckpt_files.txt"
t0=$SECONDS
HF_HOME=/tmp/hf-empty timeout 300 python -m gsm8k_grpo eval --checkpoint "$FINAL" --samples 200 --json \
  > "$OUT/hub_eval.json" 2> "$OUT/hub_eval.log"
echo "eval rc=$? wall $((SECONDS - t0)) s"
python - "$OUT/hub_eval.json" "$OUT/hub_metrics.jsonl" <<'PY'
import json, statistics, sys
e = json.load(open(sys.argv[1]))
m = [json.loads(x) for x in open(sys.argv[2])]
med = lambda k: statistics.median(r[k] for r in m[1:] if k in r)
print(f"eval: strict {100*e['strict_accuracy']:.1f} % lenient {100*e['lenient_accuracy']:.1f} % on {e['questions']}")
print(f"train: {len(m)} steps; median step {med('time_step'):.2f} s (generate {med('time_generate'):.2f}, update "
      f"{med('time_update'):.2f}, push {med('time_push'):.3f}); nonfinite {sum(r['nonfinite_steps'] for r in m)}; "
      f"policy_lag {sorted({r['policy_lag'] for r in m})}; optimizer steps {sum(r['optimizer_steps'] for r in m)}")
PY
