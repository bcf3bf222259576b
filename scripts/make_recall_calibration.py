#!/usr/bin/env python3
"""Writes the recall-probe calibration set (docs/DESIGN.md section 3.4).

Each sample is one fixed-length byte sequence of the retrieval FORM (not the
evaluation's content): '# file: <stem>_<n>.py', filler code taken from
data/calibration.bin, a dict NAME = {"key": "6-hex value", ...} at some depth,
more filler, then the question line 'assert NAME["key"] == "' and the 6-byte
answer. NAME has 6 letters and keys 5 characters, so the question plus answer
is always 33 bytes: with --probes 33 the calibrator compresses exactly the
context (which ends with a newline) and probes with the question and answer
tokens. Own generator and seed; never data/retrieval.jsonl.

Usage: scripts/make_recall_calibration.py [--samples 8] [--seq-len 4096]
       [--seed 777] [--out data/calibration_recall.bin]
Output: samples * seq_len bytes, one token per byte (moendctl calibrate reads
it with --recall-data, --recall-seq-len and --recall-probes).
"""
import argparse
import os
import random

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
PROBES = 33  # len('assert ') + 6 + len('["') + 5 + len('"] == "') + 6


def printable(text):
    return all(32 <= ord(ch) < 127 or ch in '\n\t' for ch in text)


def make_sample(rnd, filler_source, index, seq_len):
    stems = ['settings', 'lookup', 'tables', 'consts', 'mapping', 'catalog', 'index']
    alnum = 'abcdefghijklmnopqrstuvwxyz0123456789'
    depth = round((index % 10) * 0.95 / 9, 3)
    name = ''.join(rnd.choice('ABCDEFGHIJKLMNOPQRSTUVWXYZ') for _ in range(6))
    entries = rnd.randint(5, 28)
    keys = []
    while len(keys) < entries:
        key = ''.join(rnd.choice(alnum) for _ in range(5))
        if key not in keys:
            keys.append(key)
    values = ['%06x' % rnd.getrandbits(24) for _ in keys]
    table = name + ' = {\n' + ''.join('    "%s": "%s",\n' % kv for kv in zip(keys, values)) + '}\n'
    asked = rnd.randrange(entries)
    header = '# file: %s_%d.py\n' % (rnd.choice(stems), rnd.randint(1000, 999999))
    question = 'assert %s["%s"] == "' % (name, keys[asked])
    answer = values[asked]
    context_len = seq_len - PROBES
    fill = context_len - len(header) - len(table) - 2
    while True:
        off = rnd.randrange(0, len(filler_source) - fill)
        filler = filler_source[off:off + fill]
        if printable(filler):
            break
    cut = int(round(depth * fill))
    context = header + filler[:cut] + ('\n' if cut else '') + table + filler[cut:] + \
        ('\n' if cut else '\n\n')
    sample = context + question + answer
    assert len(context) == context_len and context.endswith('\n'), len(context)
    assert len(question) + len(answer) == PROBES
    assert len(sample) == seq_len
    return sample


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--samples', type=int, default=8)
    ap.add_argument('--seq-len', type=int, default=4096)
    ap.add_argument('--seed', type=int, default=777)
    ap.add_argument('--out', default=os.path.join(ROOT, 'data', 'calibration_recall.bin'))
    args = ap.parse_args()
    if args.seq_len < 1024:
        ap.error('--seq-len must be at least 1024 (the dict and filler need room)')
    filler_source = open(os.path.join(ROOT, 'data', 'calibration.bin'), 'rb').read().decode('latin-1')
    rnd = random.Random(args.seed)
    data = ''.join(make_sample(rnd, filler_source, i, args.seq_len) for i in range(args.samples))
    with open(args.out, 'wb') as f:
        f.write(data.encode('latin-1'))
    print('wrote %s: %d samples x %d bytes, probes %d' % (args.out, args.samples, args.seq_len, PROBES))


if __name__ == '__main__':
    main()
