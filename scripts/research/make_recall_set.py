"""Dev recall set of the same FORM as data/retrieval.jsonl (not its content):
'# file: <stem>_<num>.py' + filler + a dict of random 5-char keys -> 6-hex values at
some depth + filler + 'assert NAME["key"] == "' ; answer = the 6 hex chars.
Filler is taken from data/calibration.bin.  Own seed, own names."""
import json, os, random, sys
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))

def make(n, seed, total=4088):
    rnd = random.Random(seed)
    cal = open(os.path.join(ROOT, 'data', 'calibration.bin'), 'rb').read().decode('latin-1')
    stems = ['settings', 'lookup', 'tables', 'consts', 'mapping', 'catalog', 'index']
    alnum = 'abcdefghijklmnopqrstuvwxyz0123456789'
    rows = []
    for i in range(n):
        depth = round((i % 10) * 0.95 / 9, 3)
        name = ''.join(rnd.choice('ABCDEFGHIJKLMNOPQRSTUVWXYZ') for _ in range(rnd.randint(5, 7)))
        nent = rnd.randint(5, 28)
        keys = []
        while len(keys) < nent:
            k = ''.join(rnd.choice(alnum) for _ in range(5))
            if k not in keys:
                keys.append(k)
        vals = ['%06x' % rnd.getrandbits(24) for _ in keys]
        d = name + ' = {\n' + ''.join('    "%s": "%s",\n' % kv for kv in zip(keys, vals)) + '}\n'
        qi = rnd.randrange(nent)
        header = '# file: %s_%d.py\n' % (rnd.choice(stems), rnd.randint(1000, 999999))
        question = 'assert %s["%s"] == "' % (name, keys[qi])
        nfill = total - len(header) - len(d) - len(question) - 2
        while True:
            off = rnd.randrange(0, len(cal) - nfill)
            filler = cal[off:off + nfill]
            if all(32 <= ord(ch) < 127 or ch in '\n\t' for ch in filler):
                break
        a = int(round(depth * nfill))
        pre, post = filler[:a], filler[a:]
        prompt = header + pre + ('\n' if a else '') + d + post + ('\n' if a else '\n\n') + question
        assert prompt.count('\n') and len(prompt) == total, len(prompt)
        rows.append(dict(prompt=prompt, answer=vals[qi], depth=depth))
    return rows

if __name__ == '__main__':
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 20261207
    out = sys.argv[3] if len(sys.argv) > 3 else os.path.join(ROOT, 'data', 'research', 'dev_recall.jsonl')
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, 'w') as f:
        for r in make(n, seed):
            f.write(json.dumps(r) + '\n')
    print('wrote', out)
