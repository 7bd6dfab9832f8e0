#!/usr/bin/env bash
# Issue 21's part of a hold, alone on the GPU, as one detached chain, so that the carry calls that follow
# (the vLLM parts, the model parts) only move files while it runs, instead of holding the machine idle:
#
#   bash bench/device/alone.sh start      detached; returns at once (after the SGLang wheels are installed)
#   bash bench/device/alone.sh stage      in the call that carries .whl/vllm/pNN: copy its files to /tmp/vwh
#                                         only (vllm_env.sh installs them later, inside the chain)
#   bash bench/device/alone.sh wait SECS  until the chain is done or SECS pass; packs $OUT/alone.tgz
#
# The chain, one after another (each step's start and end in $A/timeline.txt):
#   1. bench/profile_update.py --variants base,fusedhead,compile --sync-debug   (nothing else runs)
#   2. ours at L, then at S: bench/device/variants.sh VARIANTS=base (the default: overlap on)
#      (meanwhile, in the background: vllm_env.sh joins and installs the vLLM parts once all are staged)
#   3. TRL + vLLM colocate at L: bench/trl_vllm_colocate.py --shapes L
# What else used the machine's CPU while a step ran (the vLLM install, the model parts' conversion) is
# only ever beside ours (steps 1-2 never overlap the TRL run): it can slow ours, never theirs.
source bench/device/env.sh || exit 1
A=${ALONE_DIR:-/tmp/alone}
mkdir -p "$A"
stamp() { echo "$(date +%s) $(date -u +%H:%M:%S) $*" >> "$A/timeline.txt"; }

case "${1:-}" in
start)
  cat > "$A/chain.sh" <<EOF
cd "$PWD"
source bench/device/env.sh
stamp() { echo "\$(date +%s) \$(date -u +%H:%M:%S) \$*" >> "$A/timeline.txt"; }
stamp profile start
python bench/profile_update.py --out "$A/profile" --variants base,fusedhead,compile --sync-debug > "$A/profile.log" 2>&1
stamp profile end rc=\$?
( t=0; until [ -f /tmp/vwh/.staged-all ] || [ \$t -ge 900 ]; do sleep 2; t=\$((t + 2)); done
  stamp vllm-install start
  ( source bench/device/vllm_env.sh ) > "$A/vllm_install.log" 2>&1
  stamp vllm-install end rc=\$?; touch "$A/vllm.ready" ) &
for S in L S; do
  stamp ours-\$S start
  OUT="$A/ours_\$S" SHAPE=\$S VARIANTS=base STEPS=10 BUDGET=300 bash bench/device/variants.sh > "$A/ours_\$S.log" 2>&1
  stamp ours-\$S end rc=\$?
done
wait
stamp trl-L start
( source bench/device/vllm_env.sh && python bench/trl_vllm_colocate.py --shapes L --budget-s 300 \
    --out "$A/trl_vllm_L.json" ) > "$A/trl_vllm_L.log" 2>&1
stamp trl-L end rc=\$?
touch "$A/done"
EOF
  stamp chain start
  setsid bash "$A/chain.sh" > "$A/chain.log" 2>&1 < /dev/null &
  echo "[alone] chain started: $A/chain.sh"
  ;;
stage)
  mkdir -p /tmp/vwh
  for d in .whl/vllm/p[0-9][0-9]; do [ -f "$d/MANIFEST" ] && cp "$d"/* /tmp/vwh/ && echo "[alone] staged ${d##*/}"; done
  missing=$(awk '$1=="file"{print $5}' /tmp/vwh/MANIFEST | while read -r n; do [ -f "/tmp/vwh/$n" ] || echo "$n"; done)
  if [ -z "$missing" ]; then touch /tmp/vwh/.staged-all; echo "[alone] every vLLM part is staged"; fi
  ;;
wait)
  end=$((SECONDS + ${2:-60}))
  until [ -f "$A/done" ] || [ "$SECONDS" -ge "$end" ]; do sleep 5; done
  cat "$A/timeline.txt"
  tail -n 3 "$A/chain.log" "$A"/*.log 2>/dev/null | cut -c1-240
  tar -czf "$OUT/alone.tgz" -C "$A" --exclude=chain.sh . 2>/dev/null
  [ -f "$A/done" ] && echo "[alone] done" || echo "[alone] still running"
  ;;
*) echo "usage: alone.sh start | stage | wait SECONDS" >&2; exit 2 ;;
esac
