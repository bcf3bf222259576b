"""Retrieval (DESIGN.md s5.2) over cached prefills with compressed caches.
plans: list of (name, variant, plan) with plan[l] = [tuple per KV head]."""
import json, os, sys, time, numpy as np
sys.path.insert(0, os.path.dirname(__file__))
from moe_np import Model, LayerCache, feed, hadamard, full_bytes
from prefill_cache import load

def run(plans, jsonl, cachedir, limit=None, log=None):
    m = Model(); Hd = hadamard(64)
    rows = [json.loads(l) for l in open(jsonl)][:limit]
    res = {p[0]: dict(correct=0, total=0, ratios=[], ok=[]) for p in plans}
    for i, r in enumerate(rows):
        f = os.path.join(cachedir, '%03d.npz' % i)
        while not os.path.exists(f):  # prefill may still be running
            time.sleep(5)
        caps, z = load(f); c = int(z['c'])
        ctx_len = r['prompt'].rindex('\n') + 1; assert ctx_len == c
        q = np.frombuffer(r['prompt'][c:].encode('latin-1'), np.uint8).astype(np.int64)
        for name, var, plan in plans:
            caches = [LayerCache(caps[l], c, plan[l], var, Hd) for l in range(m.L)]
            nbytes = sum(C.bytes for C in caches)
            lg = feed(m, caches, list(q), c); pos = c + len(q); out = []
            for j in range(len(r['answer'])):
                t = int(np.argmax(lg)); out.append(t)
                if j + 1 < len(r['answer']):
                    lg = feed(m, caches, [t], pos); pos += 1
            ok = bytes(out).decode('latin-1') == r['answer']
            R = res[name]; R['total'] += 1; R['correct'] += int(ok); R['ok'].append(int(ok))
            R['ratios'].append(full_bytes(c) / nbytes)
        if log:
            print(i, ' '.join('%s=%d/%d' % (k, v['correct'], v['total']) for k, v in res.items()), flush=True, file=log)
    for R in res.values():
        R['achieved_ratio'] = float(np.mean(R['ratios'])); del R['ratios']
    return res
