#!/usr/bin/env bash
# Train PRESET on the real weights up to MAX_STEPS, in one <=10-minute device command.
#   bash bench/device/learn/train.sh PRESET MAX_STEPS        e.g.  train.sh 1hour 70 ; train.sh 1hour 125
# First call:  grpo train --preset PRESET --config bench/device/learn/config.yaml
#                  --set model.path=$QWEN_CODER_DIR --set output_dir=/tmp/runs --set trainer.max_steps=MAX_STEPS
# Later calls (the run dir has a checkpoint): grpo resume /tmp/runs/PRESET/trial0 --set trainer.max_steps=MAX_STEPS
# so one preset can be split over several back-to-back commands (/tmp/runs lives while the machine is warm).
# Checkpoints come every checkpoint.every steps (25 in the presets) and at MAX_STEPS; a chunk cut by the
# timeout resumes from its last checkpoint on the next call. The trainer gets TRAIN_TIMEOUT s (default
# 510; SIGTERM, which stops the SGLang child; SIGKILL 20 s later), so the command ends within ~540 s.
# Writes to $OUT: train.out (stdout+stderr), train.log, metrics.jsonl, reward.png (when drawn),
# sglang_server.log (tail), train_chunks.jsonl (one line per call: rc, wall, steps; kept in /tmp/learn).
# CMD_BUDGET (default 590) caps TRAIN_TIMEOUT so the whole command, warm-up wait included, ends in time;
# trainer.time_limit_minutes (TRAIN_TIMEOUT - 45 s) makes the trainer save and stop before the timeout.
# Knobs: EXTRA_SET="key=value ..." adds --set overrides (on a resume only the keys resume allows
# without --force: trainer.max_steps, logging.*, eval.every/at_end, ...); FORCE=1 passes --force to resume.
source bench/device/env.sh || exit 1
set -u
source bench/device/learn/common.sh || exit 1
PRESET=${1:?usage: train.sh PRESET MAX_STEPS}
MAX=${2:?usage: train.sh PRESET MAX_STEPS}
RUN=$RUNS/$PRESET/${TRIAL:-trial0}
LIMIT=${TRAIN_TIMEOUT:-510}
need_model || exit 1
bash "$LEARN_DIR/warm.sh" stop
# the device command has CMD_BUDGET s in all (600 - margin); waiting for the warm-up above came out of it.
# Session 6's first call gave 560 s after an 84 s wait and the device tool cut the command at 600 s.
room=$(( ${CMD_BUDGET:-590} - SECONDS - 30 ))   # 20 s TERM->KILL grace + 10 s for the copies below
if [ "$LIMIT" -gt "$room" ]; then
  echo "== TRAIN_TIMEOUT $LIMIT s -> $room s: $SECONDS s of this command are gone (warm-up wait)"
  LIMIT=$room
fi

before=$(ckpt_step "$RUN")
if [ "$before" -gt 0 ]; then
  mode=resume
  cmd=("$PY" -m gsm8k_grpo resume "$RUN" --set "trainer.max_steps=$MAX")
else
  mode=train
  cmd=("$PY" -m gsm8k_grpo train --preset "$PRESET" --config "$LEARN_CONFIG" --set "model.path=$MODEL"
       --set "output_dir=$RUNS" --set "trainer.max_steps=$MAX")
fi
# stop cleanly with a checkpoint 45 s before the timeout (trainer.time_limit_minutes), so a chunk that
# runs short of MAX_STEPS loses no steps; the timeout stays as the safety net
cmd+=(--set "trainer.time_limit_minutes=$(awk -v s="$LIMIT" 'BEGIN {printf "%.2f", (s - 45) / 60}')")
# shellcheck disable=SC2206  # EXTRA_SET is a list of key=value words on purpose
extra=(${EXTRA_SET:-})
for kv in "${extra[@]}"; do cmd+=(--set "$kv"); done
[ "$mode" = resume ] && [ "${FORCE:-0}" = 1 ] && cmd+=(--force)   # resume although the config changed
echo "== $(date +%T) $mode: ${cmd[*]}  (checkpoint step before: $before, timeout $LIMIT s)"
t0=$SECONDS
timeout -k 20 -s TERM "$LIMIT" "${cmd[@]}" > "$OUT/train.out" 2>&1
rc=$?
wall=$((SECONDS - t0))
after=$(ckpt_step "$RUN")
timed_out=false; { [ "$rc" = 124 ] || [ "$rc" = 137 ]; } && timed_out=true
echo "== $(date +%T) rc=$rc wall ${wall} s timed_out=$timed_out; checkpoint step $before -> $after (target $MAX)"
tail -n 5 "$OUT/train.out" | sed 's/^/   | /'

printf '{"preset": "%s", "mode": "%s", "max_steps": %d, "rc": %d, "wall_s": %d, "timed_out": %s, "ckpt_before": %d, "ckpt_after": %d, "limit_s": %d}\n' \
  "$PRESET" "$mode" "$MAX" "$rc" "$wall" "$timed_out" "$before" "$after" "$LIMIT" >> "$STATE/train_chunks.jsonl"
cp "$STATE/train_chunks.jsonl" "$OUT/"
cp "$RUN/metrics.jsonl" "$RUN/train.log" "$OUT/" 2>/dev/null
[ -f "$RUN/reward.png" ] && cp "$RUN/reward.png" "$OUT/"
[ -f "$RUN/sglang_server.log" ] && tail -c 200000 "$RUN/sglang_server.log" > "$OUT/sglang_server.log"

# the last few progress lines and evals, for the command's output
grep -E "step [0-9]+/|eval on|resumed from|ERROR|Error" "$RUN/train.log" 2>/dev/null | tail -n 6 | sed 's/^/   /'
if [ "$after" -ge "$MAX" ]; then
  echo "DONE: $RUN has a checkpoint at step $after; next: bash $LEARN_DIR/final.sh $PRESET"
  [ "$rc" != 0 ] && echo "   (rc=$rc after the last checkpoint: see the end of train.out; the checkpoint is complete)"
elif [ "$after" -gt 0 ]; then
  echo "INCOMPLETE: checkpoint at step $after of $MAX; call train.sh $PRESET $MAX again (it resumes)"
else
  echo "FAILED: no checkpoint in $RUN; see train.out / train.log (a new call starts from scratch)"
fi
exit 0
