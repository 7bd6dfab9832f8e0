#!/usr/bin/env bash
# The core-loop redesign (issue 18) beside the code before it, in one device command: bench/device/suite.sh
# PART=ours at shapes S and L (random full-size weights, ipc, 9 steps of which 7 are measured) for the tree
# carried in .carry/before (commit 0466761's src/, bench/, presets/:
#   mkdir -p .carry/before && git archive 0466761 src bench presets | tar -x -C .carry/before)
# and then for this tree. Returns $OUT/before_after.tgz (both sides' summary.json, metrics and log tails)
# and prints both summaries.
source bench/device/env.sh || exit 1
HERE=$PWD
mkdir -p /tmp/ba
for side in before after; do
  [ "$side" = before ] && cd .carry/before || cd "$HERE" || exit 1
  rm -rf /tmp/runs/bench
  mkdir -p "/tmp/ba/$side"
  PYTHONPATH=$PWD/src:$PYTHONPATH OUT=/tmp/ba/$side SHAPES="S L" PART=ours \
    bash bench/device/suite.sh > "/tmp/ba/${side}_suite.log" 2>&1
  echo "== $side: rc=$?"
  for s in S L; do tail -3 "/tmp/ba/$side/train_$s.log" > "/tmp/ba/$side/train_$s.tail"; rm -f "/tmp/ba/$side/train_$s.log"; done
  python "$HERE/bench/summarize.py" /tmp/runs/bench | cut -c1-400
done
cd "$HERE"
tar -czf "$OUT/before_after.tgz" -C /tmp/ba .
