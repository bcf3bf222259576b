"""Entry point: solve plans for each research method at ratios 8/14/20 from its
calibration table and evaluate retrieval on the dev set (or, with --public, on
data/retrieval.jsonl: only for the final candidates).
  python3 scripts/research/run_ablation.py --methods baseline,perhead ...
Results: data/research/results/<set>_<method>.json"""
import argparse, json, os, sys, time
import numpy as np
sys.path.insert(0, os.path.dirname(__file__))
from moe_np import Variant, ROOT
from solve import plan_from_table
from eval_dev import run

TD = os.path.join(ROOT, 'data', 'research', 'tables')
COMMITTED = os.path.join(ROOT, 'data', 'tables', 'tinycode_calibration_4096x16.json')
STD_BITS = {2, 4, 8, 16}

def tab(**kw):
    v = Variant(**kw); return v, os.path.join(TD, v.name() + '.json')

def allow_std(o):  # the committed grid's axes: dropped evicted tokens, bits 2/4/8/16
    return o[3] == 0 and o[1] in STD_BITS and o[2] in STD_BITS

def allow_mikv(o):
    return o[1] in STD_BITS and o[2] in STD_BITS

def allow_bits(o):
    return o[3] == 0

# name -> (variant, table path, units, allow)
METHODS = {
    'baseline': (Variant(), COMMITTED, 'layer', None),
    'layer_std': tab() + ('layer', allow_std),
    'perhead': tab() + ('head', allow_std),
    'mikv': tab() + ('layer', allow_mikv),
    'perhead_mikv': tab() + ('head', allow_mikv),
    'bits13': tab() + ('layer', allow_bits),
    'all': tab() + ('layer', None),
    'perhead_all': tab() + ('head', None),
    'g128': tab(G=128, Gc=64) + ('layer', allow_bits),
    'g128_all': tab(G=128, Gc=64) + ('layer', None),
    'perhead_g128_all': tab(G=128, Gc=64) + ('head', None),
    'rot': tab(rot=True) + ('layer', allow_bits),
    'rot_all': tab(rot=True) + ('layer', None),
    'w16': tab(w=16) + ('layer', allow_std),
    'w8': tab(w=8) + ('layer', allow_std),
    'w8_all': tab(w=8) + ('layer', None),
    'h2o': tab(score='h2o') + ('layer', allow_std),
    'snaph2o': tab(score='snap+h2o') + ('layer', allow_std),
    'recent': tab(score='recent') + ('layer', allow_std),
}

def merged(paths_alphas):
    """s = sum alpha_i * s_i over the options common to all tables (code + recall probes)."""
    ts = [(json.load(open(p)), a) for p, a in paths_alphas]
    for t, _ in ts:
        if 'tuples' in t:  # committed moend table -> research format (per layer only)
            t['options'] = [(d['keep'], d['kbits'], d['vbits'], 0) for d in t['tuples']]
            t['s_layer'] = t['s']; t['s_head'] = [[row, row] for row in t['s']]
    keys = [set(map(tuple, t['options'])) for t, _ in ts]
    common = [tuple(o) for o in ts[0][0]['options'] if all(tuple(o) in k for k in keys)]
    out = dict(options=common, seconds=sum(t.get('seconds', 0) for t, _ in ts))
    for f in ('s_layer', 's_head'):
        acc = None
        for t, a in ts:
            idx = {tuple(o): i for i, o in enumerate(t['options'])}
            arr = np.array(t[f])[..., [idx[o] for o in common]] * a
            acc = arr if acc is None else acc + arr
        out[f] = acc.tolist()
    return out

def R(v):
    return os.path.join(TD, 'recall_' + v.name() + '.json')

V128 = Variant(G=128, Gc=64)
METHODS.update({
    'recall_g128': (V128, [(os.path.join(TD, V128.name() + '.json'), 1.0), (R(V128), 1.0)], 'layer', None),
    'recallonly_g128': (V128, [(R(V128), 1.0)], 'layer', None),
    'perhead_recall_g128': (V128, [(os.path.join(TD, V128.name() + '.json'), 1.0), (R(V128), 1.0)], 'head', None),
    'recall_g32': (Variant(), [(os.path.join(TD, Variant().name() + '.json'), 1.0), (R(Variant()), 1.0)], 'layer', None),
    'recall_g32_std': (Variant(), [(os.path.join(TD, Variant().name() + '.json'), 1.0), (R(Variant()), 1.0)], 'layer', allow_std),
})

V32 = Variant()
def allow_noeb(o):
    return o[3] == 0
def allow_std128(o):
    return o[3] == 0 and o[1] in STD_BITS and o[2] in STD_BITS
METHODS.update({
    'recall_committed_std': (V32, [(COMMITTED, 1.0), (R(V32), 1.0)], 'layer', allow_std),
    'perhead_recall_g32_std': (V32, [(os.path.join(TD, V32.name() + '.json'), 1.0), (R(V32), 1.0)], 'head', allow_std),
    'recall_g128_noeb': (V128, [(os.path.join(TD, V128.name() + '.json'), 1.0), (R(V128), 1.0)], 'layer', allow_noeb),
    'recall_g128_std': (V128, [(os.path.join(TD, V128.name() + '.json'), 1.0), (R(V128), 1.0)], 'layer', allow_std128),
    'recall3_g128': (V128, [(os.path.join(TD, V128.name() + '.json'), 1.0), (R(V128), 3.0)], 'layer', None),
    'perhead_recall3_g128': (V128, [(os.path.join(TD, V128.name() + '.json'), 1.0), (R(V128), 3.0)], 'head', None),
    'perhead_recall_g32': (V32, [(os.path.join(TD, V32.name() + '.json'), 1.0), (R(V32), 1.0)], 'head', None),
    'perhead_recall_g32_noeb': (V32, [(os.path.join(TD, V32.name() + '.json'), 1.0), (R(V32), 1.0)], 'head', allow_noeb),
    'perhead_recall_w8_std': (Variant(w=8), [(os.path.join(TD, Variant(w=8).name() + '.json'), 1.0), (R(Variant(w=8)), 1.0)], 'head', allow_std),
    'perhead_recall_g128_noeb': (V128, [(os.path.join(TD, V128.name() + '.json'), 1.0), (R(V128), 1.0)], 'head', allow_noeb),
})

if __name__ == '__main__':
    ap = argparse.ArgumentParser()
    ap.add_argument('--methods', required=True); ap.add_argument('--ratios', default='8,14,20')
    ap.add_argument('--public', action='store_true'); ap.add_argument('--limit', type=int, default=None)
    ap.add_argument('--full', action='store_true', help='also evaluate the full cache')
    a = ap.parse_args()
    jsonl = os.path.join(ROOT, 'data', 'retrieval.jsonl') if a.public else os.path.join(ROOT, 'data', 'research', 'dev_recall.jsonl')
    cache = '/tmp/mr/public' if a.public else '/tmp/mr/dev'
    setname = 'public' if a.public else 'dev'
    plans, meta = [], {}
    if a.full:
        plans.append(('full', Variant(), [[(1.0, 16, 16, 0)] * 2] * 12)); meta['full'] = dict(method='full')
    for mname in a.methods.split(','):
        var, tpath, units, allow = METHODS[mname]
        table = merged(tpath) if isinstance(tpath, list) else json.load(open(tpath))
        for r in [float(x) for x in a.ratios.split(',')]:
            try:
                plan, b, ra, s = plan_from_table(table, units, r, var, allow)
            except ValueError as e:
                print(mname, r, 'infeasible'); continue
            key = '%s@%g' % (mname, r)
            plans.append((key, var, plan))
            meta[key] = dict(method=mname, target=r, plan_bytes=b, plan_ratio=ra, predicted=s, units=units,
                             variant=var.__dict__, table=str([os.path.relpath(p, ROOT) for p, _ in tpath]) if isinstance(tpath, list) else os.path.relpath(tpath, ROOT),
                             calib_seconds=table.get('seconds'), plan=[[list(t) for t in hs] for hs in plan])
    t0 = time.time()
    res = run(plans, jsonl, cache, a.limit, log=sys.stderr)
    os.makedirs(os.path.join(ROOT, 'data', 'research', 'results'), exist_ok=True)
    for k, R in res.items():
        R.update(meta[k]); R['eval_seconds'] = time.time() - t0
        json.dump(R, open(os.path.join(ROOT, 'data', 'research', 'results', '%s_%s.json' % (setname, k.replace('@', '_r'))), 'w'))
        print('%-22s %2d/%2d  achieved %.2f  plan %.2f  pred %.4f' % (k, R['correct'], R['total'], R['achieved_ratio'], R.get('plan_ratio', 1), R.get('predicted', 0)))
