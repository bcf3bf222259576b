"""Validate the numpy forward against data/golden (logits A/B, k/v of layers 0, 11)."""
import os, sys, numpy as np
sys.path.insert(0, os.path.dirname(__file__))
from moe_np import Model, ROOT
m = Model(); g = os.path.join(ROOT, 'data', 'golden')
for name in 'AB':
    toks = np.frombuffer(open(os.path.join(g, 'input_%s.bin' % name), 'rb').read(), np.uint8).astype(np.int64)
    lg, caps, _ = m.prefill(toks, capture=(name == 'A'))
    ref = np.fromfile(os.path.join(g, 'logits_%s.f32' % name), np.float32).reshape(len(toks), 256)
    print(name, 'logits max abs diff', np.abs(lg - ref).max(), 'ref scale', np.abs(ref).max())
    if name == 'A':
        for f, a in (('k_layer0', caps[0]['k']), ('v_layer0', caps[0]['v']), ('k_layer11', caps[11]['k'])):
            r = np.fromfile(os.path.join(g, f + '.f32'), np.float32).reshape(a.shape)
            print(f, np.abs(a - r).max())
