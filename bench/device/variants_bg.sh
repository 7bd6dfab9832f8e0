#!/usr/bin/env bash
# Run bench/device/variants.sh in the background, so the GPU works while later commands carry other
# things (the real model's parts), then collect its files in a later command.
#   VARIANTS="base fit24 saver" STEPS=8 BUDGET=660 bash bench/device/variants_bg.sh start   # returns at once
#   bash bench/device/variants_bg.sh wait [MAX_S]   # waits (default 400 s), kills it if still running,
#                                                   # writes $OUT/variants_all.tgz (json, log, tgz, stdout, and
#                                                   # files/: every variant's train log and metrics so far)
# Budget the wait: on 2026-11-27 "base fit24 saver" needed more than 420 s after a 50 s head start
# (the first SGLang start on a fresh machine compiles for ~80 s more), and the killed run returned nothing
# but stdout, because this copy of files/ did not exist yet.
# start copies the tree to /tmp/vrepo first (env.sh's tree_snapshot): the repo copy of a command can be replaced by the
# next command's, and the background job must not import from a tree that changes under it.
source bench/device/env.sh || exit 1
V=/tmp/vrepo
case "${1:-}" in
start)
  rm -rf "$V" /tmp/vout && mkdir -p /tmp/vout && tree_snapshot "$V"
  setsid nohup bash -c "cd $V && OUT=/tmp/vout VARIANTS='${VARIANTS:-base fit24 saver}' STEPS=${STEPS:-8} \
    BUDGET=${BUDGET:-660} bash bench/device/variants.sh; touch /tmp/vout/.done" > /tmp/vout/stdout.log 2>&1 < /dev/null &
  echo $! > /tmp/vrepo.pid
  echo "[variants_bg] started pid $(cat /tmp/vrepo.pid)"
  ;;
wait)
  for _ in $(seq "${2:-400}"); do [ -f /tmp/vout/.done ] && break; sleep 1; done
  if [ ! -f /tmp/vout/.done ]; then
    echo "[variants_bg] still running after ${2:-400} s: killed"
    kill -- -"$(cat /tmp/vrepo.pid)" 2>/dev/null; sleep 5; kill -9 -- -"$(cat /tmp/vrepo.pid)" 2>/dev/null
  fi
  tail -n 25 /tmp/vout/stdout.log
  # the finished variants' files too: a killed variants.sh never wrote its own tgz (2026-11-27)
  mkdir -p /tmp/vout/files && cp -r /tmp/variants/files/. /tmp/vout/files/ 2>/dev/null
  for m in /tmp/variants/runs/bench/*/metrics.jsonl; do
    [ -f "$m" ] && cp "$m" "/tmp/vout/files/metrics_$(basename "$(dirname "$m")").jsonl"
  done
  tar -czf "$OUT/variants_all.tgz" -C /tmp/vout . && echo "[variants_bg] $OUT/variants_all.tgz"
  ;;
*) echo "usage: variants_bg.sh start|wait [MAX_S]"; exit 2 ;;
esac
