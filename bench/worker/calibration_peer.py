#!/usr/bin/env python3
"""The straightforward PyTorch calibration loop of DESIGN.md section 5, the peer
that a GPU calibrator is measured against (issue 4: >= 20x faster on the same GPU).

Per layer and sequence: SnapKV scores once (32 window queries, causal softmax,
summed over the group's heads, average pool 7); then for each of the 112
tuples (keep, kbits, vbits): select the top m per KV head, fake-quantize the
kept K (per channel, groups of 32 tokens) and V (per token, groups of 32
channels) with fp16 scale/min, keep the 32-token window in fp16, attend with
the 256 probe queries over the compressed prefix plus the causal uncompressed
tail, and take s = sum ||o' - o||^2 / sum ||o||^2 against (1,16,16).

usage: calibration_peer.py [--tokens 16384] [--heads 28] [--kv-heads 4] [--dim 128] [--reps 3]
Activations are random and already on the GPU ("activations given").
"""
import argparse
import math

import torch

KEEPS = [1.0, 0.75, 0.5, 0.375, 0.25, 0.125, 0.0625]
BITS = [16, 8, 4, 2]
W, PROBES = 32, 256


def fake_quant(x, bits, dim):
    """KIVI min-max quantization along groups of 32 on `dim` (fp16 scale/min)."""
    if bits == 16:
        return x.half().float()
    qmax = 2 ** bits - 1
    # x: [H, m, D]; dim 1: groups of 32 tokens per channel; dim 2: 32 channels per token
    H, m, D = x.shape
    if dim == 1:
        pad = (-m) % 32
        xp = torch.nn.functional.pad(x, (0, 0, 0, pad))
        g = xp.view(H, -1, 32, D)
        # padded rows must not enter min/max: use the real rows only
        mask = torch.arange(m + pad, device=x.device).view(1, -1, 32, 1) < m
        mn = torch.where(mask, g, float("inf")).amin(2, keepdim=True)
        mx = torch.where(mask, g, float("-inf")).amax(2, keepdim=True)
    else:
        g = x.view(H, m, D // 32, 32)
        mn = g.amin(3, keepdim=True)
        mx = g.amax(3, keepdim=True)
    scale = ((mx - mn) / qmax).half().float()
    mn = mn.half().float()
    code = torch.where(scale > 0, torch.clamp(torch.floor((g - mn) / scale + 0.5), 0, qmax), torch.zeros_like(g))
    out = code * scale + mn
    if dim == 1:
        return out.view(H, m + pad, D)[:, :m]
    return out.view(H, m, D)


def snapkv_scores(q, k, c, group):
    # q: [Hq, n, D], k: [Hkv, n, D]; window queries [c-32, c), candidates [0, c-32)
    Hq, _, D = q.shape
    qw = q[:, c - W:c]                                    # [Hq, 32, D]
    kk = k.repeat_interleave(group, 0)[:, :c]             # [Hq, c, D]
    logits = torch.einsum("hwd,hkd->hwk", qw, kk) / math.sqrt(D)
    pos = torch.arange(c, device=q.device)
    causal = pos.view(1, -1) <= (c - W + torch.arange(W, device=q.device)).view(-1, 1)
    logits = logits.masked_fill(~causal, float("-inf"))
    p = logits.softmax(-1)[:, :, :c - W].sum(1)           # [Hq, c-32]
    p = p.view(-1, group, c - W).sum(1)                   # [Hkv, c-32]
    return torch.nn.functional.avg_pool1d(p.unsqueeze(1), 7, 1, 3, count_include_pad=False).squeeze(1)


def probe_attention(qp, kc, vc, kt, vt, group):
    # qp: [Hq, P, D]; kc/vc: [Hkv, m+32, D] compressed prefix; kt/vt: [Hkv, P, D] tail (causal)
    D = qp.shape[-1]
    k = torch.cat([kc, kt], 1).repeat_interleave(group, 0)
    v = torch.cat([vc, vt], 1).repeat_interleave(group, 0)
    pre = kc.shape[1]
    mask = torch.ones(PROBES, pre + PROBES, dtype=torch.bool, device=qp.device)
    mask[:, pre:] = torch.tril(torch.ones(PROBES, PROBES, dtype=torch.bool, device=qp.device))
    return torch.nn.functional.scaled_dot_product_attention(qp.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0),
                                                            attn_mask=mask, scale=1 / math.sqrt(D))[0]


def measure_layer(q, k, v):
    Hq, n, D = q.shape
    Hkv = k.shape[0]
    group = Hq // Hkv
    c = n - PROBES
    scores = snapkv_scores(q, k, c, group)
    qp, kt, vt = q[:, c:], k[:, c:], v[:, c:]
    win_k, win_v = k[:, c - W:c].half().float(), v[:, c - W:c].half().float()
    outs = {}
    for keep in KEEPS:
        m = round(keep * (c - W))
        idx = scores.topk(m, -1).indices.sort(-1).values if m > 0 else torch.zeros(Hkv, 0, dtype=torch.long,
                                                                                  device=q.device)
        ks = torch.gather(k[:, :c - W], 1, idx.unsqueeze(-1).expand(-1, -1, D))
        vs = torch.gather(v[:, :c - W], 1, idx.unsqueeze(-1).expand(-1, -1, D))
        for kb in BITS:
            kq = torch.cat([fake_quant(ks, kb, 1), win_k], 1)
            for vb in BITS:
                vq = torch.cat([fake_quant(vs, vb, 2), win_v], 1)
                outs[(keep, kb, vb)] = probe_attention(qp, kq, vq, kt, vt, group)
    o = outs[(1.0, 16, 16)]
    norm = (o.double() ** 2).sum()
    return {t: float(((x.double() - o.double()) ** 2).sum() / norm) for t, x in outs.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--heads", type=int, default=28)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    torch.manual_seed(0)
    dev = args.device
    q = torch.randn(args.heads, args.tokens, args.dim, device=dev)
    k = torch.randn(args.kv_heads, args.tokens, args.dim, device=dev)
    v = torch.randn(args.kv_heads, args.tokens, args.dim, device=dev)
    measure_layer(q, k, v)  # warm-up
    times = []
    for _ in range(args.reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        res = measure_layer(q, k, v)
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    times.sort()
    print(f"RESULT peer tokens={args.tokens} heads={args.heads} kv_heads={args.kv_heads} dim={args.dim} "
          f"tuples={len(res)} ms={times[len(times) // 2]:.1f} device=\"{torch.cuda.get_device_name()}\" "
          f"torch={torch.__version__}")
    print("sample s:", {str(t): f"{res[t]:.3e}" for t in [(0.5, 4, 4), (0.25, 2, 2), (1.0, 8, 8)]})


if __name__ == "__main__":
    main()
