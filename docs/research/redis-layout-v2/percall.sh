#!/bin/bash
# Redis instructions of one call of a script, whatever its batch: SCRIPT's text (common.lua
# prepended by the caller) run N times with fetch.lua's ARGV on an empty queue, under callgrind
# in a private redis-server on port 6397, minus the same run with 0 calls.
#
#   cat ../../../workers/lua/common.lua ../../../workers/lua/fetch.lua >/tmp/f.lua
#   ./percall.sh /tmp/f.lua 2000            # an idle fetch
#   echo 'return 1' >/tmp/bare.lua; ./percall.sh /tmp/bare.lua 2000   # EVALSHA alone
set -euo pipefail
P=6397
tmp=$(mktemp -d)
one() {
  valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.%p" "${REDIS:-redis-server}" --port $P --save '' --appendonly no >/dev/null 2>&1 &
  for _ in $(seq 100); do redis-cli -p $P ping >/dev/null 2>&1 && break; sleep 0.3; done
  S=$(redis-cli -p $P script load "$(cat "$1")")
  python3 -c "
import sys
out = sys.stdout.buffer
for i in range($2):
    a = [b'EVALSHA', b'$S', b'1', b'{x:q}:', b'', b'64', b'30000', b'10000', b'100']
    out.write(b'*%d\r\n' % len(a) + b''.join(b'\$%d\r\n%s\r\n' % (len(x), x) for x in a))
" | redis-cli -p $P --pipe >"$tmp/pipe.log"
  if ! grep -q 'errors: 0,' "$tmp/pipe.log"; then cat "$tmp/pipe.log" >&2; exit 1; fi
  redis-cli -p $P shutdown nosave >/dev/null 2>&1 || true
  wait
  grep -h '^summary' "$tmp"/cg.* | awk '{print $2}'
  rm -f "$tmp"/cg.*
}
base=$(one "$1" 0)
total=$(one "$1" "$2")
python3 -c "print(round(($total - $base) / $2))"
rm -rf "$tmp"
