#!/usr/bin/env bash
# The untrained model on the whole GSM8K test split, then the HF-engine vs SGLang speed comparison.
#   BUDGET=$((570 - SECONDS)) bash bench/device/learn/baseline.sh
# Run it in the command that converts the model (after `source .whl/model/pNN/model-env.sh`), or in
# any later one. Writes to $OUT (and a copy to /tmp/learn for final.sh):
#   baseline.json  baseline_rows.jsonl  baseline.log            grpo eval --model $QWEN_CODER_DIR --all
#   speed_sglang.json  speed_hf.json  speed.log                 the first 128 questions, each engine
# Every *.json is the `grpo eval --json` summary plus wall_s (server start included) and rc.
# Knobs: BASELINE=0 skips the baseline, SPEED=0 the speed comparison; BUDGET = seconds this script
# may take (default 540); a step that no longer fits is skipped, and says so.
source bench/device/env.sh || exit 1
set -u
source bench/device/learn/common.sh || exit 1
DEADLINE=$((SECONDS + ${BUDGET:-540}))
echo "== baseline.sh: model $MODEL, data $DATA, config $LEARN_CONFIG, budget $(left) s"
need_model || exit 1
bash "$LEARN_DIR/warm.sh" stop      # the warm-up server must not share the GPU with the real ones

# eval NAME MIN_S ARGS...: grpo eval --json > $OUT/NAME.json, stderr > $OUT/NAME.log (appended), under a timeout
run_eval() {
  local name=$1 min=$2 rc t0 log
  shift 2
  log=$OUT/${LOG_NAME:-$name}.log
  if [ "$(left)" -lt "$min" ]; then
    echo "SKIPPED $name: $(left) s left, it needs about $min s" | tee -a "$log"
    return 0
  fi
  t0=$SECONDS
  echo "== $name: grpo eval $*  (timeout $(( $(left) - 10 )) s)" | tee -a "$log"
  timeout -k 10 $(( $(left) - 10 )) "$PY" -m gsm8k_grpo eval --model "$MODEL" --config "$LEARN_CONFIG" \
    --data "$DATA" --json "$@" > "$OUT/$name.json" 2>> "$log"
  rc=$?
  [ "$rc" = 124 ] && echo "TIMED OUT: $name" | tee -a "$log"
  annotate_json "$OUT/$name.json" "wall_s=$((SECONDS - t0))" "rc=$rc"
  echo "   rc=$rc wall $((SECONDS - t0)) s"; tail -3 "$log" | sed 's/^/   | /'
  show_json "$OUT/$name.json"
  cp "$OUT/$name.json" "$STATE/" 2>/dev/null
}

if [ "${BASELINE:-1}" != 0 ]; then
  # shellcheck disable=SC2086  # EVAL_SET is "--all" or "--samples N" on purpose
  run_eval baseline 150 $EVAL_SET --engine "$EVAL_ENGINE" --output "$OUT/baseline_rows.jsonl"
  cp "$OUT/baseline_rows.jsonl" "$STATE/" 2>/dev/null
fi
if [ "${SPEED:-1}" != 0 ]; then
  # same 128 questions, greedy, 512 new tokens; summary "seconds" = generation only, wall_s = all
  LOG_NAME=speed run_eval speed_sglang 100 --samples "${SPEED_SAMPLES:-128}" --engine sglang
  LOG_NAME=speed run_eval speed_hf 120 --samples "${SPEED_SAMPLES:-128}" --engine hf
fi
ls -la "$OUT"
exit 0
