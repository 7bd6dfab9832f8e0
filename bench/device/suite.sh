# Issue 6 benchmark suite on one GPU (carrying .whl/b and .carry, or after an earlier call installed them).
# Writes $OUT/{generate.json,summary.json,trl.json,*.log}; then `python bench/perf_report.py DIR` here
# turns the fetched files into bench/results/<date>-<card>.md.
source bench/device/env.sh || exit 1
PART=${PART:-all}
if [ "$PART" = all ] || [ "$PART" = ours ]; then
  # ours: the real recipe at S, L and 64x8x512 (ipc, on-policy), >= 5 measured steps after 2 warm-up
  # of bench/results/2026-11-27-h100-suite.md (other settings at one shape: bench/device/variants.sh)
  declare -A SPEC=([S]="2 256 8 9" [L]="8 512 8 9" [T64]="8 512 64 7")
  for name in ${SHAPES:-S L T64}; do
    # shellcheck disable=SC2086  # a spec is words on purpose
    set -- ${SPEC[$name]}
    extra=(); [ -n "${5:-}" ] && extra=(--set "$5")
    timeout 300 python bench/grpo_bench.py train --config bench/configs/random-0.5b.yaml --set trial_name=$name \
      --set output_dir=/tmp/runs --set rollout.n=$1 --set rollout.max_new_tokens=$2 --set trainer.batch_size=$3 \
      --set trainer.max_steps=$4 "${extra[@]}" > "$OUT/train_$name.log" 2>&1; echo "$name rc=$?"
    cp "/tmp/runs/bench/$name/metrics.jsonl" "$OUT/metrics_$name.jsonl" 2>/dev/null
  done
  python bench/summarize.py /tmp/runs/bench --json "$OUT/summary.json"
fi
if [ "$PART" = all ] || [ "$PART" = generate ]; then
  timeout 400 python bench/generate_bench.py --out "$OUT/generate.json" 2>&1 | tee "$OUT/generate.log" | grep "^\[" | tail -8
fi
if [ "$PART" = all ] || [ "$PART" = trl ]; then
  # TRL GRPOTrainer, same card, shapes S and L (its default transformers generation)
  mkdir -p /tmp/trlsite && pip install -q --no-index --no-deps --target /tmp/trlsite .carry/wheels/*.whl 2>&1 | tail -2
  QWEN_CONFIG_DIR=src/gsm8k_grpo/assets/qwen2.5-0.5b-instruct GSM8K_TRAIN=.carry/gsm8k/train.jsonl \
    PYTHONPATH=/tmp/trlsite:$PYTHONPATH SKIP_AFTER_S=${TRL_BUDGET_S:-420} \
    timeout 560 python bench/trl_grpo_baseline.py "$OUT/trl.json" > "$OUT/trl.log" 2>&1; echo "trl rc=$?"
  tail -5 "$OUT/trl.log"
fi
exit 0
