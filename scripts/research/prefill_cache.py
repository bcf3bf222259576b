"""Prefill contexts once (modes dev, recallcal, calib) and cache per-layer k, v (fp16) and eviction statistics.
  dev <jsonl> <outdir>      : context = prompt up to its last newline, c = len(context)
  calib <n_seq> <outdir>    : data/calibration.bin sequences of 4096, c = 3840 (probes kept)"""
import json, os, sys, time, numpy as np
sys.path.insert(0, os.path.dirname(__file__))
from moe_np import Model, ROOT

def save(path, caps, extra):
    d = dict(extra)
    for l, cp in enumerate(caps):
        d['k%d' % l] = cp['k'].astype(np.float16); d['v%d' % l] = cp['v'].astype(np.float16)
        d['snap%d' % l] = cp['snap'].astype(np.float32); d['h2o%d' % l] = cp['h2o'].astype(np.float32)
        if cp['qprobe'].shape[1]:
            d['qp%d' % l] = cp['qprobe'].astype(np.float32)
    np.savez(path, **d)

def load(path, L=12):
    z = np.load(path)
    caps = []
    for l in range(L):
        caps.append(dict(k=z['k%d' % l].astype(np.float32), v=z['v%d' % l].astype(np.float32),
                         snap=z['snap%d' % l].astype(np.float64), h2o=z['h2o%d' % l].astype(np.float64),
                         qprobe=z['qp%d' % l] if ('qp%d' % l) in z.files else None))
    return caps, z

if __name__ == '__main__':
    mode, arg, out = sys.argv[1], sys.argv[2], sys.argv[3]
    os.makedirs(out, exist_ok=True); m = Model()
    if mode == 'dev':
        rows = [json.loads(l) for l in open(arg)]
        order = list(enumerate(rows))
        if os.environ.get('REVERSE'):  # a second worker from the other end
            order.reverse()
        for i, r in order:
            path = os.path.join(out, '%03d.npz' % i)
            if os.path.exists(path + '.tmp.npz'):
                continue
            if os.path.exists(path):
                continue
            ctx = r['prompt'][:r['prompt'].rindex('\n') + 1]
            toks = np.frombuffer(ctx.encode('latin-1'), np.uint8).astype(np.int64)
            t0 = time.time()
            _, caps, _ = m.prefill(toks, capture=True, want_logits=False)
            save(path + '.tmp.npz', caps, dict(c=len(toks)))
            os.rename(path + '.tmp.npz', path)
            print(i, len(toks), '%.1fs' % (time.time() - t0), flush=True)
    elif mode == 'recallcal':  # own recall prompts (never the public set): full prompt + answer, c = context
        rows = [json.loads(l) for l in open(arg)]
        for i, r in enumerate(rows):
            path = os.path.join(out, 'cal%02d.npz' % i)
            if os.path.exists(path):
                continue
            c = r['prompt'].rindex('\n') + 1
            toks = np.frombuffer((r['prompt'] + r['answer']).encode('latin-1'), np.uint8).astype(np.int64)
            _, caps, _ = m.prefill(toks, capture=True, want_logits=False, c=c)
            save(path + '.tmp.npz', caps, dict(c=c))
            os.rename(path + '.tmp.npz', path)
            print('recallcal', i, flush=True)
    else:
        cal = np.fromfile(os.path.join(ROOT, 'data', 'calibration.bin'), np.uint8).reshape(16, 4096).astype(np.int64)
        for i in range(int(arg)):
            path = os.path.join(out, 'cal%02d.npz' % i)
            if os.path.exists(path):
                continue
            _, caps, _ = m.prefill(cal[i], capture=True, want_logits=False, c=3840)
            save(path + '.tmp.npz', caps, dict(c=3840))
            os.rename(path + '.tmp.npz', path)
            print('cal', i, flush=True)
