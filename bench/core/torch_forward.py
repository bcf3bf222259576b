#!/usr/bin/env python3
"""PyTorch CPU peer for the moend forward benchmark.

A plain Llama forward (RMSNorm, rotate-half RoPE, GQA, SwiGLU) in float32 over
the same Hugging Face folder, written the way Hugging Face's eager attention
does it (matmul, causal mask, softmax, matmul). Prints one JSON line per length
with the median prefill time. Checks its own logits against data/golden first.
"""
import argparse
import json
import math
import os
import statistics
import struct
import sys
import time

import torch


def load_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (hlen,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + hlen])
    base = 8 + hlen
    dtypes = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        t = torch.frombuffer(bytearray(raw[base + b : base + e]), dtype=dtypes[info["dtype"]])
        out[name] = t.reshape(info["shape"]).float()
    return out


class Llama:
    def __init__(self, model_dir):
        with open(os.path.join(model_dir, "config.json")) as f:
            self.cfg = json.load(f)
        self.w = load_safetensors(os.path.join(model_dir, "model.safetensors"))
        c = self.cfg
        self.h = c["num_attention_heads"]
        self.hkv = c["num_key_value_heads"]
        self.d = c.get("head_dim") or c["hidden_size"] // self.h
        self.eps = c["rms_norm_eps"]
        inv = 1.0 / (c["rope_theta"] ** (torch.arange(0, self.d, 2, dtype=torch.int64).float() / self.d))
        self.inv_freq = inv

    def norm(self, x, w):
        var = x.pow(2).mean(-1, keepdim=True)
        return w * (x * torch.rsqrt(var + self.eps))

    @torch.no_grad()
    def forward(self, tokens):
        n = tokens.shape[0]
        w, h, hkv, d = self.w, self.h, self.hkv, self.d
        x = w["model.embed_tokens.weight"][tokens]
        pos = torch.arange(n, dtype=torch.float32)
        freqs = torch.outer(pos, self.inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        cos, sin = emb.cos(), emb.sin()

        def rope(t):
            t1, t2 = t[..., : d // 2], t[..., d // 2 :]
            return t * cos + torch.cat([-t2, t1], dim=-1) * sin

        mask = torch.full((n, n), float("-inf")).triu(1)
        for l in range(self.cfg["num_hidden_layers"]):
            p = f"model.layers.{l}."
            hs = self.norm(x, w[p + "input_layernorm.weight"])
            q = torch.nn.functional.linear(hs, w[p + "self_attn.q_proj.weight"]).view(n, h, d).transpose(0, 1)
            k = torch.nn.functional.linear(hs, w[p + "self_attn.k_proj.weight"]).view(n, hkv, d).transpose(0, 1)
            v = torch.nn.functional.linear(hs, w[p + "self_attn.v_proj.weight"]).view(n, hkv, d).transpose(0, 1)
            q, k = rope(q), rope(k)
            k = k.repeat_interleave(h // hkv, dim=0)
            v = v.repeat_interleave(h // hkv, dim=0)
            s = torch.matmul(q, k.transpose(1, 2)) / math.sqrt(d) + mask
            a = torch.matmul(torch.softmax(s, dim=-1), v).transpose(0, 1).reshape(n, h * d)
            x = x + torch.nn.functional.linear(a, w[p + "self_attn.o_proj.weight"])
            hs = self.norm(x, w[p + "post_attention_layernorm.weight"])
            g = torch.nn.functional.linear(hs, w[p + "mlp.gate_proj.weight"])
            u = torch.nn.functional.linear(hs, w[p + "mlp.up_proj.weight"])
            x = x + torch.nn.functional.linear(torch.nn.functional.silu(g) * u, w[p + "mlp.down_proj.weight"])
        x = self.norm(x, w["model.norm.weight"])
        return torch.nn.functional.linear(x, w["lm_head.weight"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--golden", required=True, help="folder with input_A.bin and logits_A.f32")
    ap.add_argument("--lengths", default="512,4096")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = Llama(args.model)

    gold_in = torch.tensor(list(open(os.path.join(args.golden, "input_A.bin"), "rb").read()))
    want = torch.frombuffer(bytearray(open(os.path.join(args.golden, "logits_A.f32"), "rb").read()),
                            dtype=torch.float32).view(-1, 256)
    diff = (model.forward(gold_in) - want).abs().max().item()
    if diff > 2e-3:
        sys.exit(f"torch peer disagrees with golden logits: max |diff| {diff}")

    data = open(args.input, "rb").read()
    for n in [int(x) for x in args.lengths.split(",")]:
        tokens = torch.tensor(list(data[:n]))
        model.forward(tokens)  # warm-up
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            model.forward(tokens)
            times.append(time.perf_counter() - t0)
        print(json.dumps({"impl": "pytorch", "version": torch.__version__, "tokens": n,
                          "threads": args.threads, "median_s": statistics.median(times),
                          "golden_max_diff": diff}), flush=True)


if __name__ == "__main__":
    main()
