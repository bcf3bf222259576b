"""numpy reference of the tinycode model, the compressed cache (DESIGN.md s2)
and the research variants (per-head tuples, low-precision evicted tokens,
larger quantization groups, Hadamard rotation, smaller windows, other
eviction scores).  Python 3 + numpy only.
"""
import json, math, os, struct
import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
F16 = np.float16


# ----------------------------------------------------------------------------- model
def load_safetensors(path):
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        hdr = json.loads(f.read(n))
        base = 8 + n
        buf = f.read()
    out = {}
    for k, v in hdr.items():
        if k == '__metadata__':
            continue
        a, b = v['data_offsets']
        assert v['dtype'] == 'BF16'
        u = np.frombuffer(buf[a:b], dtype=np.uint16).astype(np.uint32) << 16
        out[k] = u.view(np.float32).reshape(v['shape'])
    return out


class Model:
    def __init__(self, path=os.path.join(ROOT, 'models', 'tinycode')):
        cfg = json.load(open(os.path.join(path, 'config.json')))
        self.L = cfg['num_hidden_layers']; self.H = cfg['num_attention_heads']
        self.Hkv = cfg['num_key_value_heads']; self.D = cfg['head_dim']
        self.eps = cfg['rms_norm_eps']; self.theta = cfg['rope_theta']
        w = load_safetensors(os.path.join(path, 'model.safetensors'))
        self.emb = w['model.embed_tokens.weight']; self.lm = w['lm_head.weight'].T.copy()
        self.norm = w['model.norm.weight']
        self.layers = []
        for l in range(self.L):
            p = 'model.layers.%d.' % l
            self.layers.append(dict(
                ln1=w[p + 'input_layernorm.weight'], ln2=w[p + 'post_attention_layernorm.weight'],
                wq=w[p + 'self_attn.q_proj.weight'].T.copy(), wk=w[p + 'self_attn.k_proj.weight'].T.copy(),
                wv=w[p + 'self_attn.v_proj.weight'].T.copy(), wo=w[p + 'self_attn.o_proj.weight'].T.copy(),
                wg=w[p + 'mlp.gate_proj.weight'].T.copy(), wu=w[p + 'mlp.up_proj.weight'].T.copy(),
                wd=w[p + 'mlp.down_proj.weight'].T.copy()))
        self.inv_freq = (1.0 / (self.theta ** (np.arange(0, self.D, 2, dtype=np.float64) / self.D)))

    def rms(self, x, w):
        return (x / np.sqrt((x.astype(np.float32) ** 2).mean(-1, keepdims=True) + self.eps)) * w

    def rope(self, x, pos):  # x [h, n, D]
        f = np.outer(pos.astype(np.float64), self.inv_freq)
        cos = np.cos(np.concatenate([f, f], -1)).astype(np.float32)
        sin = np.sin(np.concatenate([f, f], -1)).astype(np.float32)
        h = self.D // 2
        rot = np.concatenate([-x[..., h:], x[..., :h]], -1)
        return x * cos + rot * sin

    def qkv(self, l, x, pos):
        P = self.layers[l]; n = x.shape[0]
        h = self.rms(x, P['ln1'])
        q = (h @ P['wq']).reshape(n, self.H, self.D).transpose(1, 0, 2)
        k = (h @ P['wk']).reshape(n, self.Hkv, self.D).transpose(1, 0, 2)
        v = (h @ P['wv']).reshape(n, self.Hkv, self.D).transpose(1, 0, 2)
        return self.rope(q, pos), self.rope(k, pos), np.ascontiguousarray(v)

    def finish(self, l, x, o):  # o [H, n, D]
        P = self.layers[l]; n = x.shape[0]
        x = x + o.transpose(1, 0, 2).reshape(n, self.H * self.D) @ P['wo']
        h = self.rms(x, P['ln2'])
        g = h @ P['wg']
        return x + ((g / (1 + np.exp(-g))) * (h @ P['wu'])) @ P['wd']

    def logits(self, x):
        return self.rms(x, self.norm) @ self.lm

    def prefill(self, tokens, capture=False, snap_window=32, block=512, want_logits=True, c=None):
        """Full causal attention.  capture: per layer k, v [Hkv, n, D] (post-RoPE),
        snap raw scores [Hkv, n] of the last `snap_window` queries (s2.4, before pooling),
        h2o column sums [Hkv, n] (attention received from every query), last q [H, 32, D]."""
        tokens = np.asarray(tokens); n = len(tokens); pos = np.arange(n)
        c = n if c is None else c
        x = self.emb[tokens].astype(np.float32)
        g = self.H // self.Hkv; sc = 1.0 / math.sqrt(self.D)
        caps = []
        for l in range(self.L):
            q, k, v = self.qkv(l, x, pos)
            o = np.empty_like(q)
            snap = np.zeros((self.Hkv, n)); h2o = np.zeros((self.Hkv, n))
            for a in range(0, n, block):
                b = min(n, a + block)
                kk = np.repeat(k[:, :b], g, 0); vv = np.repeat(v[:, :b], g, 0)
                s = np.matmul(q[:, a:b], kk.transpose(0, 2, 1)) * sc
                mask = np.arange(b)[None, :] > np.arange(a, b)[:, None]
                s[:, mask] = -np.inf
                s -= s.max(-1, keepdims=True)
                p = np.exp(s); p /= p.sum(-1, keepdims=True)
                o[:, a:b] = np.matmul(p, vv)
                if capture:
                    pk = p.reshape(self.Hkv, g, b - a, b).sum(1)
                    if a < c:
                        h2o[:, :b] += pk[:, :min(b, c) - a].sum(1)
                    lo = max(a, c - snap_window); hi = min(b, c)
                    if lo < hi:
                        snap[:, :b] += pk[:, lo - a:hi - a].sum(1)
            if capture:
                caps.append(dict(k=k, v=v, snap=snap[:, :c], h2o=h2o[:, :c], qprobe=q[:, c:].copy()))
            x = self.finish(l, x, o)
        lg = self.logits(x) if want_logits else None
        return lg, caps, x


# ----------------------------------------------------------------------------- quantization
def hadamard(n):
    H = np.array([[1.0]])
    while H.shape[0] < n:
        H = np.block([[H, H], [H, -H]])
    return (H / math.sqrt(n)).astype(np.float32)


def quant_groups(x, bits):
    """x [..., G] : min-max asymmetric over the last axis with fp16 scale/min (s2.6)."""
    if bits >= 16:
        return x.astype(F16).astype(np.float32)
    mn = x.min(-1, keepdims=True); mx = x.max(-1, keepdims=True)
    scale = ((mx - mn) / (2 ** bits - 1)).astype(F16).astype(np.float32)
    mn16 = mn.astype(F16).astype(np.float32)
    safe = np.where(scale == 0, 1.0, scale)
    code = np.clip(np.floor((x - mn16) / safe + 0.5), 0, 2 ** bits - 1)
    code = np.where(scale == 0, 0, code)
    return code * scale + mn16


def quant_k(x, bits, G=32):
    """keys [m, D]: per channel over groups of G consecutive tokens (last partial)."""
    m, D = x.shape
    if bits >= 16 or m == 0:
        return x.astype(F16).astype(np.float32)
    out = np.empty_like(x)
    full = (m // G) * G
    if full:
        out[:full] = quant_groups(x[:full].reshape(m // G, G, D).transpose(0, 2, 1), bits).transpose(0, 2, 1).reshape(full, D)
    if full < m:
        out[full:] = quant_groups(x[full:].T, bits).T
    return out


def quant_v(x, bits, Gc=32):
    m, D = x.shape
    if bits >= 16 or m == 0:
        return x.astype(F16).astype(np.float32)
    return quant_groups(x.reshape(m, D // Gc, Gc), bits).reshape(m, D)


def k_bytes(m, b, D=64, G=32):
    return m * D * b / 8 + (math.ceil(m / G) * D * 4 if b < 16 else 0) if m else 0


def v_bytes(m, b, D=64, Gc=32):
    return m * D * b / 8 + (m * math.ceil(D / Gc) * 4 if b < 16 else 0) if m else 0


# ----------------------------------------------------------------------------- compression
def kept_count(keep, cand):
    return int(min(cand, max(0, math.floor(keep * cand + 0.5))))


def pool7(raw):
    n = len(raw)
    if n == 0:
        return raw
    cs = np.concatenate([[0.0], np.cumsum(raw)])
    j = np.arange(n); lo = np.maximum(0, j - 3); hi = np.minimum(n - 1, j + 3)
    return (cs[hi + 1] - cs[lo]) / (hi - lo + 1)


def scores_for(cap, h, c, w, kind='snap'):
    cand = max(0, c - w)
    if kind == 'snap':
        return pool7(cap['snap'][h][:cand])
    if kind == 'h2o':  # mean attention received per query that could see the token
        n = cap["h2o"].shape[1]
        return pool7(cap['h2o'][h][:cand] / (n - np.arange(cand)))
    if kind == 'snap+h2o':
        a = pool7(cap['snap'][h][:cand]); n = cap["h2o"].shape[1]
        b = pool7(cap['h2o'][h][:cand] / (n - np.arange(cand)))
        return a / (a.mean() + 1e-30) + b / (b.mean() + 1e-30)
    if kind == 'recent':  # sinks (4) + most recent
        s = np.arange(cand, dtype=np.float64); s[:4] = 1e9
        return s
    if kind == 'knorm':  # small key norm = important (Devoto et al. 2024)
        return -np.linalg.norm(cap['k'][h][:cand], axis=-1)
    raise ValueError(kind)


class Variant:
    """Global quantizer / layout settings of a method."""
    def __init__(self, G=32, Gc=32, rot=False, w=32, score='snap'):
        self.G, self.Gc, self.rot, self.w, self.score = G, Gc, rot, w, score

    def name(self):
        return 'G%d_Gc%d_rot%d_w%d_%s' % (self.G, self.Gc, int(self.rot), self.w, self.score)


def compress_head(k, v, scores, c, t, var, Hd=None):
    """k, v [n, D] float32 of one KV head (n >= c).  t = (keep, kb, vb, eb) with eb the
    bits of evicted tokens (0 = dropped).  Returns dequantized K, V of everything the
    head stores for the prefix and its exact byte count (s2.9 + evicted part)."""
    keep, kb, vb = t[:3]; eb = t[3] if len(t) > 3 else 0
    D = k.shape[1]; w = min(c, var.w); cand = c - w
    m = kept_count(keep, cand)
    if m == cand:
        kept = np.arange(cand); ev = np.arange(0)
    else:
        order = np.lexsort((np.arange(cand), -scores))  # larger score first, ties lower pos
        kept = np.sort(order[:m]); ev = np.sort(order[m:])
    ev = ev if eb > 0 else ev[:0]
    parts_k, parts_v = [], []
    nb = 0.0
    for idx, b in ((kept, (kb, vb)), (ev, (eb, eb))):
        if len(idx) == 0:
            continue
        kk, vv = k[idx], v[idx]
        if var.rot:
            kk = kk @ Hd; vv = vv @ Hd
        kq = quant_k(kk, b[0], var.G); vq = quant_v(vv, b[1], var.Gc)
        if var.rot:
            kq = kq @ Hd.T; vq = vq @ Hd.T
        parts_k.append(kq); parts_v.append(vq)
        nb += k_bytes(len(idx), b[0], D, var.G) + v_bytes(len(idx), b[1], D, var.Gc)
    parts_k.append(k[cand:c].astype(F16).astype(np.float32))
    parts_v.append(v[cand:c].astype(F16).astype(np.float32))
    nb += w * D * 4
    return np.concatenate(parts_k), np.concatenate(parts_v), nb


class LayerCache:
    """One layer's compressed cache with the fp16 residual and flush (s2.8).
    tuples: one per KV head."""
    def __init__(self, caps_l, c, tuples, var, Hd=None):
        self.var = var; self.Hd = Hd; self.tuples = tuples
        self.K, self.V, self.bytes = [], [], 0.0
        for h, t in enumerate(tuples):
            sc = scores_for(caps_l, h, c, var.w, var.score) if t[0] < 1 else None
            K, V, nb = compress_head(caps_l['k'][h], caps_l['v'][h], sc, c, t, var, Hd)
            self.K.append(K); self.V.append(V); self.bytes += nb
        self.rk = [[] for _ in tuples]; self.rv = [[] for _ in tuples]

    def append(self, k, v):  # k, v [Hkv, t, D]; never crosses a flush boundary
        D = k.shape[2]
        for h, t in enumerate(self.tuples):
            self.rk[h].extend(list(k[h].astype(F16).astype(np.float32)))
            self.rv[h].extend(list(v[h].astype(F16).astype(np.float32)))
            if len(self.rk[h]) == 32:
                kk = np.array(self.rk[h]); vv = np.array(self.rv[h])
                if self.var.rot:
                    kk = kk @ self.Hd; vv = vv @ self.Hd
                kq = quant_k(kk, t[1], 32); vq = quant_v(vv, t[2], self.var.Gc)
                if self.var.rot:
                    kq = kq @ self.Hd.T; vq = vq @ self.Hd.T
                self.K[h] = np.concatenate([self.K[h], kq]); self.V[h] = np.concatenate([self.V[h], vq])
                self.rk[h] = []; self.rv[h] = []

    def kv(self, h):
        if self.rk[h]:
            return np.concatenate([self.K[h], np.array(self.rk[h])]), np.concatenate([self.V[h], np.array(self.rv[h])])
        return self.K[h], self.V[h]

    def nres(self):
        return len(self.rk[0])


def decode_chunk(model, caches, tokens, pos0, all_logits=False):
    """Feed `tokens` (a chunk that completes at most one residual group, only at its
    last token) through the compressed caches; returns logits of the last token."""
    x = model.emb[np.asarray(tokens)].astype(np.float32); t = len(tokens)
    pos = np.arange(pos0, pos0 + t); g = model.H // model.Hkv; sc = 1.0 / math.sqrt(model.D)
    for l in range(model.L):
        q, k, v = model.qkv(l, x, pos)
        C = caches[l]
        C.append(k, v)
        o = np.empty_like(q)
        for h in range(model.Hkv):
            K, V = C.kv(h)
            n = K.shape[0]
            s = np.matmul(q[h * g:(h + 1) * g], K.T) * sc  # [g, t, n]
            # the last t rows of K are the chunk itself (or its quantized flush): causal
            mask = np.arange(n)[None, :] > (n - t + np.arange(t))[:, None]
            s[:, mask] = -np.inf
            s -= s.max(-1, keepdims=True); p = np.exp(s); p /= p.sum(-1, keepdims=True)
            o[h * g:(h + 1) * g] = np.matmul(p, V)
        x = model.finish(l, x, o)
    return model.logits(x) if all_logits else model.logits(x[-1:])[0]


def feed(model, caches, tokens, pos0, all_logits=False):
    """Segments tokens so that the token that completes a group is processed alone
    after the flush (s5.1 step 3).  Returns last logits."""
    i = 0; lg = None; outs = []
    while i < len(tokens):
        r = caches[0].nres()
        room = 32 - r  # tokens until the group completes
        if room > 1:
            j = min(len(tokens), i + room - 1)
        else:
            j = i + 1
        lg = decode_chunk(model, caches, tokens[i:j], pos0 + i, all_logits)
        outs.append(lg)
        i = j
    return np.concatenate(outs) if all_logits else lg


def full_bytes(c, L=12, Hkv=2, D=64):
    return L * Hkv * c * D * 4
