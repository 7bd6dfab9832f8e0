#!/usr/bin/env bash
# Issue 21's part of a hold, alone on the GPU, as one detached chain, so that the carry calls that follow
# (the vLLM parts, the model parts) only move files while it runs, instead of holding the machine idle:
#
#   bash bench/device/alone.sh start      detached; returns at once (after the SGLang wheels are installed)
#   bash bench/device/alone.sh stage      in the call that carries .whl/vllm/pNN: copy its files to /tmp/vwh
#                                         only (vllm_env.sh installs them later, inside the chain)
#   bash bench/device/alone.sh wait SECS  until the chain is done or SECS pass; packs $OUT/alone.tgz
#
# The chain, one step after another (ALONE_STEPS, below; each step's start and end in $A/timeline.txt);
# session 12's, the default:
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
  # what the chain runs, in this order (the TRL runs always last, after ours): ALONE_STEPS, from
  #   profile   bench/profile_update.py --variants $PROFILE_VARIANTS --sync-debug
  #   ours-L    bench/device/variants.sh at L with VARIANTS=$OURS_VARIANTS (default base), STEPS=$OURS_STEPS
#             (default 10), BUDGET=$OURS_BUDGET (default 300 s a variant)
  #   ours-S    the same at S
  #   trl-L     bench/trl_vllm_colocate.py --shapes L (needs the vLLM parts: `alone.sh stage` calls)
  #   trl-S     the same at S
  STEPS_=${ALONE_STEPS:-profile ours-L ours-S trl-L}
  set -- $STEPS_; first=${1:-}
  # the chain runs from a copy of the tree that later calls' syncs do not touch (env.sh, tree_snapshot)
  TREE=${ALONE_TREE:-/tmp/alone-tree}
  tree_snapshot "$TREE" || { echo "[alone] could not copy the tree to $TREE" >&2; exit 1; }
  {
    echo "cd \"$TREE\""
    echo "source bench/device/env.sh"
    echo "stamp() { echo \"\$(date +%s) \$(date -u +%H:%M:%S) \$*\" >> \"$A/timeline.txt\"; }"
    for st in $STEPS_; do
      case $st in
        profile) cat <<EOF
stamp profile start
python bench/profile_update.py --out "$A/profile" --variants ${PROFILE_VARIANTS:-base,fusedhead,compile} --sync-debug > "$A/profile.log" 2>&1
stamp profile end rc=\$?
EOF
        ;;
        ours-L|ours-S) cat <<EOF
stamp $st start
OUT="$A/${st/-/_}" SHAPE=${st#ours-} VARIANTS="${OURS_VARIANTS:-base}" STEPS=${OURS_STEPS:-10} BUDGET=${OURS_BUDGET:-$((300 * $(wc -w <<< "${OURS_VARIANTS:-base}")))} bash bench/device/variants.sh > "$A/${st/-/_}.log" 2>&1
stamp $st end rc=\$?
EOF
        ;;
        trl-L|trl-S) ;;
        *) echo "alone.sh: unknown step $st (valid: profile ours-L ours-S trl-L trl-S)" >&2; exit 2 ;;
      esac
      # the vLLM install, in the background once its parts are staged, after the first step (so that
      # the first step runs alone) and beside the next ones (ours, never TRL's)
      if [ "$st" = "$first" ] && [[ " $STEPS_ " == *" trl-"* ]]; then cat <<EOF
( t=0; until [ -f /tmp/vwh/.staged-all ] || [ \$t -ge 900 ]; do sleep 2; t=\$((t + 2)); done
  stamp vllm-install start
  ( source bench/device/vllm_env.sh ) > "$A/vllm_install.log" 2>&1
  stamp vllm-install end rc=\$?; touch "$A/vllm.ready" ) &
EOF
      fi
    done
    echo "wait"
    for st in $STEPS_; do
      case $st in trl-L|trl-S) cat <<EOF
stamp $st start
( source bench/device/vllm_env.sh && python bench/trl_vllm_colocate.py --shapes ${st#trl-} --budget-s 300 \\
    --out "$A/trl_vllm_${st#trl-}.json" ) > "$A/trl_vllm_${st#trl-}.log" 2>&1
stamp $st end rc=\$?
EOF
      esac
    done
    echo "touch \"$A/done\""
  } > "$A/chain.sh"
  stamp chain start
  setsid bash "$A/chain.sh" > "$A/chain.log" 2>&1 < /dev/null &
  echo "[alone] chain started: $A/chain.sh ($STEPS_)"
  ;;
stage)
  mkdir -p /tmp/vwh
  for d in .whl/vllm/p[0-9][0-9]; do [ -f "$d/MANIFEST" ] && cp "$d"/* /tmp/vwh/ && echo "[alone] staged ${d##*/}"; done
  [ -f /tmp/vwh/MANIFEST ] || { echo "[alone] no vLLM part here: carry .whl/vllm/pNN in this call" >&2; exit 1; }
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
