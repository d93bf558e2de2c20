"""Writes the RESP commands of N jobs to stdout: enqueued in calls of 500, then fetched in
calls of B (env, default 64), then finished (succeeded) in calls of B, with the ARGV the
broker sends.

usage: drive.py PREFIX ENQUEUE_SHA FETCH_SHA FINISH_SHA N; PH=e|ef|efi (default efi) picks
the phases; PAYLOAD sets the jobs' payload JSON (default {"n":1}).
"""
import os
import sys

prefix, enq, fet, fin, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
out = sys.stdout.buffer
def cmd(*a):
    a = [x if isinstance(x, bytes) else str(x).encode() for x in a]
    out.write(b'*%d\r\n' % len(a) + b''.join(b'$%d\r\n%s\r\n' % (len(x), x) for x in a))
K = '{%s:bench}:' % prefix
ids = ['%032x' % (i + 1) for i in range(n)]
payload = os.environ.get('PAYLOAD', '{"n":1}')
for s in range(0, n, 500):
    args = ['EVALSHA', enq, 1, K, '', 10000, min(500, n - s)]
    for id in ids[s:s+500]:
        args += [id, 'sys.noop', '5|3||', '5', '', '', '', '0', '', payload]
    cmd(*args)
ph = os.environ.get('PH', 'efi')
B = int(os.environ.get('B', '64'))
for s in (range(0, n, B) if 'f' in ph else []):
    cmd('EVALSHA', fet, 1, K, '', B, 30000, 10000, 100)
for s in (range(0, n, B) if 'i' in ph else []):
    chunk = ids[s:s+B]
    args = ['EVALSHA', fin, 1, K, '', 10000, len(chunk)]
    for id in chunk:
        args += [id, '1', 'ok', 'null', '']
    cmd(*args)
