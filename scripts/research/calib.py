"""Probe-attention sensitivity (DESIGN.md s3.1) for the research option grid, per
(layer, KV head) and per layer, on cached calibration prefills (c = 3840).
Option = (keep, kb, vb, eb): eb = bits of the evicted tokens (0 = dropped).
Uses a fixed exponent offset (the reference row max) so that the numerators
exp(L - M) @ V can be shared between options (the GPU calibrator's trick)."""
import glob, itertools, json, math, os, sys, time, numpy as np
sys.path.insert(0, os.path.dirname(__file__))
from moe_np import Variant, scores_for, kept_count, quant_k, quant_v, hadamard
from prefill_cache import load

KEEPS = [1.0, 0.5, 0.25, 0.125, 0.0625]
BITS = [1, 2, 3, 4, 8, 16]
EBS = [0, 1, 2]

def options(keeps=KEEPS, bits=BITS, ebs=EBS):
    out = []
    for keep in keeps:
        for kb in bits:
            for vb in bits:
                for eb in (ebs if keep < 1 else [0]):
                    out.append((keep, kb, vb, eb))
    return out

def qk(x, b, var, Hd):
    if var.rot:
        return quant_k(x @ Hd, b, var.G) @ Hd.T
    return quant_k(x, b, var.G)

def qv(x, b, var, Hd):
    if var.rot:
        return quant_v(x @ Hd, b, var.Gc) @ Hd.T
    return quant_v(x, b, var.Gc)

def measure_head(cap, h, c, var, opts, Hd, pstride):
    k = cap['k'][h]; v = cap['v'][h]; D = k.shape[1]
    qp = cap['qprobe'][2 * h:2 * h + 2, ::pstride]  # [2, P, D]
    P = qp.shape[1]; ppos = c + np.arange(0, cap['qprobe'].shape[1], pstride)
    q2 = qp.reshape(2 * P, D) / math.sqrt(D)
    n = k.shape[0]
    tailk = k[c:]; tailv = v[c:]
    Lt = q2 @ tailk.T
    Lt[(np.arange(c, n)[None, :] > np.tile(ppos, 2)[:, None])] = -np.inf
    pre16k = k[:c].astype(np.float16).astype(np.float32); pre16v = v[:c].astype(np.float16).astype(np.float32)
    Lref = q2 @ pre16k.T
    M = np.maximum(Lref.max(1), Lt.max(1))[:, None]
    Ut = np.exp(Lt - M); Zt = Ut.sum(1); Nt = Ut @ tailv
    Uref = np.exp(Lref - M); oref = (Uref @ pre16v + Nt) / (Uref.sum(1) + Zt)[:, None]
    den = float((oref ** 2).sum())
    w = min(c, var.w); cand = c - w
    Uw = np.exp(q2 @ pre16k[cand:c].T - M); Zw = Uw.sum(1) + Zt; Nw = Uw @ pre16v[cand:c] + Nt
    sc = scores_for(cap, h, c, var.w, var.score)
    order = np.lexsort((np.arange(cand), -sc))
    res = {}
    keeps = sorted(set(o[0] for o in opts), reverse=True)
    for keep in keeps:
        m = kept_count(keep, cand)
        kept = np.sort(order[:m]); ev = np.sort(order[m:])
        kbs = sorted(set(o[1] for o in opts if o[0] == keep)); vbs = sorted(set(o[2] for o in opts if o[0] == keep))
        ebs = sorted(set(o[3] for o in opts if o[0] == keep))
        kk, vk = k[kept], v[kept]
        Vcat = np.concatenate([qv(vk, b, var, Hd) for b in vbs], 1) if m else None
        Nk, Zk = {}, {}
        for kb in kbs:
            if m:
                U = np.exp(q2 @ qk(kk, kb, var, Hd).T - M)
                Zk[kb] = U.sum(1); N = U @ Vcat
                for i, vb in enumerate(vbs):
                    Nk[kb, vb] = N[:, i * D:(i + 1) * D]
            else:
                Zk[kb] = 0
                for vb in vbs:
                    Nk[kb, vb] = 0
        Ne, Ze = {0: 0}, {0: 0}
        for eb in ebs:
            if eb and len(ev):
                U = np.exp(q2 @ qk(k[ev], eb, var, Hd).T - M)
                Ze[eb] = U.sum(1); Ne[eb] = U @ qv(v[ev], eb, var, Hd)
            elif eb:
                Ze[eb] = 0; Ne[eb] = 0
        for o in opts:
            if o[0] != keep:
                continue
            _, kb, vb, eb = o
            out = (Nk[kb, vb] + Ne[eb] + Nw) / (Zk[kb] + Ze[eb] + Zw)[:, None]
            res[o] = float(((out - oref) ** 2).sum())
    return res, den

def calibrate(files, var, opts, pstride=2):
    Hd = hadamard(64)
    L = 12; Hkv = 2
    sh = np.zeros((len(files), L, Hkv, len(opts))); sl = np.zeros((len(files), L, len(opts)))
    for fi, f in enumerate(files):
        caps, z = load(f); c = int(z['c'])
        for l in range(L):
            nums = []; dens = []
            for h in range(Hkv):
                r, d = measure_head(caps[l], h, c, var, opts, Hd, pstride)
                nums.append(np.array([r[o] for o in opts])); dens.append(d)
                sh[fi, l, h] = nums[-1] / d
            sl[fi, l] = (nums[0] + nums[1]) / (dens[0] + dens[1])
    return sh.mean(0), sl.mean(0)

if __name__ == '__main__':
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument('--cal', default='/tmp/mr/cal'); ap.add_argument('--nseq', type=int, default=4)
    ap.add_argument('--G', type=int, default=32); ap.add_argument('--Gc', type=int, default=32)
    ap.add_argument('--rot', type=int, default=0); ap.add_argument('--w', type=int, default=32)
    ap.add_argument('--score', default='snap'); ap.add_argument('--pstride', type=int, default=2)
    ap.add_argument('--out', default=None)
    ap.add_argument('--bits', default='1,2,3,4,8,16'); ap.add_argument('--ebs', default='0,1,2')
    a = ap.parse_args()
    var = Variant(a.G, a.Gc, bool(a.rot), a.w, a.score)
    files = sorted(glob.glob(os.path.join(a.cal, 'cal*.npz')))[:a.nseq]
    opts = options(bits=[int(x) for x in a.bits.split(',')], ebs=[int(x) for x in a.ebs.split(',')])
    t0 = time.time()
    sh, sl = calibrate(files, var, opts, a.pstride)
    out = a.out or os.path.join(os.path.dirname(__file__), '..', '..', 'data', 'research', 'tables', var.name() + '.json')
    os.makedirs(os.path.dirname(out), exist_ok=True)
    json.dump(dict(variant=var.__dict__, options=opts, compression_point=3840, samples=len(files),
                   probe_stride=a.pstride, seconds=time.time() - t0,
                   s_head=sh.tolist(), s_layer=sl.tolist()), open(out, 'w'))
    print('wrote', out, '%.0fs' % (time.time() - t0))
