#!/bin/bash
# Redis instructions per job for enqueue + fetch + finish, counted by callgrind in a private
# redis-server on port 6396 (nothing else needs to be idle: callgrind counts instructions).
#
#   ./measure.sh current            # the scripts of workers/lua/ (common.lua prepended)
#   ./measure.sh prototype          # this directory's packed-string prototype
#   PH=e ./measure.sh current       # enqueue only (PH=ef: enqueue + fetch)
#   PAYLOAD='{"text":"...100 bytes..."}' ./measure.sh current   # another payload
#   B=16 ./measure.sh current       # fetch and finish calls of 16 jobs (default 64)
#   REDIS=/path/to/redis-server ./measure.sh current   # another build (one with symbols, for
#                                   # callgrind_annotate; KEEP=/tmp/cg keeps the profiles)
#
# 2,000 jobs: enqueued in calls of 500, fetched and finished in calls of B (64). The figure is the
# run's total minus the same run with 0 jobs (server start-up, SCRIPT LOAD), divided by 2,000.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
lua=$here/../../../workers/lua
tmp=$(mktemp -d)
for s in enqueue fetch finish; do
  case $1 in
    current) cat "$lua/common.lua" "$lua/$s.lua" >"$tmp/$s.lua" ;;
    prototype) cat "$here/common.lua" "$here/$s.lua" >"$tmp/$s.lua" ;;
    *) echo "usage: $0 current|prototype" >&2; exit 2 ;;
  esac
done
P=6396
one() {
  valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.out.%p" "${REDIS:-redis-server}" --port $P --save '' --appendonly no >/dev/null 2>&1 &
  for _ in $(seq 100); do redis-cli -p $P ping >/dev/null 2>&1 && break; sleep 0.3; done
  E=$(redis-cli -p $P script load "$(cat "$tmp/enqueue.lua")")
  F=$(redis-cli -p $P script load "$(cat "$tmp/fetch.lua")")
  G=$(redis-cli -p $P script load "$(cat "$tmp/finish.lua")")
  python3 "$here/drive.py" t "$E" "$F" "$G" "$1" | redis-cli -p $P --pipe >"$tmp/pipe.log"
  # A script that fails is cheap: a figure from one would mean nothing.
  if ! grep -q 'errors: 0,' "$tmp/pipe.log"; then cat "$tmp/pipe.log" >&2; exit 1; fi
  redis-cli -p $P shutdown nosave >/dev/null 2>&1 || true
  wait
  grep -h '^summary' "$tmp"/cg.out.* | awk '{print $2}'
  if [ -n "${KEEP:-}" ]; then cp "$tmp"/cg.out.* "$KEEP.$1"; fi
  rm -f "$tmp"/cg.out.*
}
base=$(one 0)
total=$(one 2000)
python3 -c "print(round(($total - $base) / 2000))"
rm -rf "$tmp"
