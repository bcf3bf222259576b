"""Held-out bits per byte (DESIGN.md s5.3) with fewer windows: prefill 3072 bytes,
compress at c = 3072, score the next 1024 teacher-forced through the compressed cache.
  python3 scripts/research/bpb.py --windows 2 --methods full,baseline@14,...  (method@ratio)"""
import argparse, json, math, os, sys, time, numpy as np
sys.path.insert(0, os.path.dirname(__file__))
from moe_np import Model, LayerCache, feed, hadamard, full_bytes, Variant, ROOT
from solve import plan_from_table
import run_ablation as RA

def logsoftmax(x):
    x = x - x.max(-1, keepdims=True); return x - np.log(np.exp(x).sum(-1, keepdims=True))

if __name__ == '__main__':
    ap = argparse.ArgumentParser(); ap.add_argument('--windows', type=int, default=2)
    ap.add_argument('--methods', required=True); ap.add_argument('--tag', default=''); a = ap.parse_args()
    plans = []
    for spec in a.methods.split(','):
        if spec == 'full':
            plans.append((spec, Variant(), [[(1.0, 16, 16, 0)] * 2] * 12)); continue
        mname, r = spec.split('@'); var, tpath, units, allow = RA.METHODS[mname]
        table = RA.merged(tpath) if isinstance(tpath, list) else json.load(open(tpath))
        plans.append((spec, var, plan_from_table(table, units, float(r), var, allow)[0]))
    data = np.fromfile(os.path.join(ROOT, 'data', 'heldout_code.bin'), np.uint8).astype(np.int64)
    m = Model(); Hd = hadamard(64); W = a.windows
    tot = {p[0]: 0.0 for p in plans}; ratio = {p[0]: [] for p in plans}; N = 0
    for w in range(W):
        st = (len(data) - 4096) * w // max(1, W - 1); seq = data[st:st + 4096]
        lg0, caps, _ = m.prefill(seq[:3072], capture=True)
        first = -logsoftmax(lg0[-1])[seq[3072]] / math.log(2)
        for name, var, plan in plans:
            caches = [LayerCache(caps[l], 3072, plan[l], var, Hd) for l in range(12)]
            ratio[name].append(full_bytes(3072) / sum(C.bytes for C in caches))
            lg = feed(m, caches, list(seq[3072:4095]), 3072, all_logits=True)
            nll = -logsoftmax(lg)[np.arange(1023), seq[3073:4096]] / math.log(2)
            tot[name] += first + nll.sum()
        N += 1024
        print('window', w, {k: round(v / N, 4) for k, v in tot.items()}, file=sys.stderr, flush=True)
    out = {k: dict(bpb=tot[k] / N, bytes=N, bpb_ratio=float(np.mean(ratio[k]))) for k in tot}
    os.makedirs(os.path.join(ROOT, 'data', 'research', 'results'), exist_ok=True)
    json.dump(out, open(os.path.join(ROOT, 'data', 'research', 'results', 'bpb_%dwin%s.json' % (W, a.tag)), 'w'), indent=1)
    for k, v in out.items():
        print('%-24s bpb %.4f  ratio %.2f' % (k, v['bpb'], v['bpb_ratio']))
