#!/usr/bin/env bash
# Score PRESET's newest checkpoint on the whole GSM8K test split and write the learning report.
#   bash bench/device/learn/final.sh PRESET
# Needs (from earlier back-to-back commands): /tmp/runs/PRESET/trial0/checkpoints/latest (train.sh) and
# /tmp/learn/baseline{.json,_rows.jsonl} (baseline.sh). Missing pieces only shrink the report.
# Writes to $OUT: final.json (grpo eval --json summary + wall_s, rc, checkpoint), final_rows.jsonl,
# final.log, metrics.jsonl, train_chunks.jsonl, learning.md and curves.png (report.py).
source bench/device/env.sh || exit 1
set -u
source bench/device/learn/common.sh || exit 1
PRESET=${1:?usage: final.sh PRESET}
RUN=$RUNS/$PRESET/${TRIAL:-trial0}
LIMIT=${EVAL_TIMEOUT:-420}
bash "$LEARN_DIR/warm.sh" stop

step=$(ckpt_step "$RUN")
CKPT=$RUN/checkpoints/step_$(printf %06d "$step")/model
if [ "$step" -gt 0 ] && [ -f "$CKPT/config.json" ]; then
  echo "== $(date +%T) final eval of $CKPT (step $step), timeout $LIMIT s"
  t0=$SECONDS
  # shellcheck disable=SC2086  # EVAL_SET is "--all" or "--samples N" on purpose
  timeout -k 10 "$LIMIT" "$PY" -m gsm8k_grpo eval --checkpoint "$CKPT" $EVAL_SET --engine "$EVAL_ENGINE" \
    --config "$LEARN_CONFIG" --data "$DATA" --output "$OUT/final_rows.jsonl" --json \
    > "$OUT/final.json" 2> "$OUT/final.log"
  rc=$?
  annotate_json "$OUT/final.json" "wall_s=$((SECONDS - t0))" "rc=$rc" "checkpoint_step=$step" "preset=$PRESET"
  echo "   rc=$rc wall $((SECONDS - t0)) s"; tail -3 "$OUT/final.log" | sed 's/^/   | /'
  show_json "$OUT/final.json"
  cp "$OUT/final.json" "$OUT/final_rows.jsonl" "$STATE/" 2>/dev/null
else
  echo "ERROR: no complete checkpoint in $RUN (train.sh $PRESET N first); the report is written without it"
fi
cp "$RUN/metrics.jsonl" "$OUT/" 2>/dev/null
cp "$STATE/train_chunks.jsonl" "$OUT/" 2>/dev/null
"$PY" "$LEARN_DIR/report.py" --in "$OUT" --in "$STATE" --in "$RUN" --preset "$PRESET" --out "$OUT" \
  || echo "report.py failed (rc=$?): re-run it on the CPU machine on the fetched files (PLAN.md)"
ls -la "$OUT"
exit 0
