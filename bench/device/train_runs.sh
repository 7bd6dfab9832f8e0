# One H100: `grpo train` 20 steps with the SGLang engine, once per transport given (default: ipc disk).
source bench/device/env.sh || exit 1
STEPS=${STEPS:-20}
for T in ${TRANSPORTS:-ipc disk}; do
  echo "== grpo train, transport $T, $STEPS steps"
  timeout ${RUN_TIMEOUT:-280} python bench/grpo_bench.py train --config bench/configs/random-0.5b.yaml \
    --set weights.transport=$T --set trial_name=$T --set output_dir=/tmp/runs --set trainer.max_steps=$STEPS $EXTRA \
    > "$OUT/train_$T.log" 2>&1
  echo "rc=$?"
  tail -4 "$OUT/train_$T.log"
  cp /tmp/runs/bench/$T/metrics.jsonl "$OUT/metrics_$T.jsonl" 2>/dev/null
  tail -c 100000 /tmp/runs/bench/$T/sglang_server.log > "$OUT/sglang_$T.log" 2>/dev/null
done
python bench/summarize.py /tmp/runs/bench 2>&1 | tail -30
exit 0
