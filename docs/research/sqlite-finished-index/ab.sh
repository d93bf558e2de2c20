#!/usr/bin/env bash
# What schema 13's partial index `jobs_finished` costs the SQLite drain: one binary, a fresh
# file each run, with or without that index (dropped before the run), rounds alternating.
# Prints per run: round, variant, processed jobs/s, process CPU µs a job.
# Usage: ab.sh BIN [ROUNDS]   (BIN: a release build of hopper; needs python3 and sqlite3)
# README, Performance, "What `jobs_finished` costs the SQLite drain".
set -u
BIN=$1
ROUNDS=${2:-5}
DIR=$(mktemp -d /tmp/hopper-index-ab.XXXXXX)
cd "$DIR"
# A file with the schema and no jobs: a one-job drain, its rows deleted.
"$BIN" bench --workload drain --jobs 1 --broker "sqlite://$DIR/tmpl.db" --json >/dev/null 2>&1
python3 - "$DIR/tmpl.db" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
c.execute('DELETE FROM jobs'); c.execute('DELETE FROM events'); c.commit()
c.execute('VACUUM'); c.close()
PY
for r in $(seq 1 "$ROUNDS"); do
  # Each variant first in every other round: the host drifts within a round.
  order="with without"
  if [ $((r % 2)) = 0 ]; then order="without with"; fi
  for v in $order; do
    rm -f d.db*
    cp tmpl.db d.db
    if [ "$v" = without ]; then sqlite3 d.db 'DROP INDEX jobs_finished'; fi
    out=$("$BIN" bench --workload drain --jobs 20000 --broker "sqlite://$DIR/d.db" --json 2>/dev/null | tail -1)
    echo "$r $v $(echo "$out" | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print(d["processed_jobs_per_s"], d["process_cpu_us_per_job"])')"
  done
done
rm -rf "$DIR"
