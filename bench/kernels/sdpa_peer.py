#!/usr/bin/env python3
"""Side-by-side decode benchmark: moend's packed-cache attention kernel
(kernels_gpu_bench) vs torch scaled_dot_product_attention over an fp16 cache,
same shapes (28 query heads, 4 KV heads, head dim 128, one query token),
same protocol (CUDA events, median, inputs rotated over enough copies to
exceed L2). Prints a markdown table with the ratios.

usage: sdpa_peer.py PATH/TO/kernels_gpu_bench [--quick] [--out FILE]
"""
import argparse
import datetime
import re
import subprocess
import sys

import torch
import torch.nn.functional as F

HQ, HKV, D = 28, 4, 128


def median_us(fn, iters, warmup=5):
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    times = []
    for i in range(iters + warmup):
        start.record()
        fn(i)
        end.record()
        end.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end) * 1e3)
    times.sort()
    return times[len(times) // 2]


def sdpa_us(batch, ctx, iters):
    one = batch * HKV * ctx * D * 2 * 2
    copies = max(1, min(16, (256 << 20) // one + 1))
    kv = [(torch.randn(batch, HKV, ctx, D, device="cuda", dtype=torch.float16),
           torch.randn(batch, HKV, ctx, D, device="cuda", dtype=torch.float16)) for _ in range(copies)]
    q = torch.randn(batch, HQ, 1, D, device="cuda", dtype=torch.float16)

    def run(i):
        k, v = kv[i % copies]
        F.scaled_dot_product_attention(q, k, v, enable_gqa=True)

    t = median_us(run, iters)
    del kv
    torch.cuda.empty_cache()
    return t, one


def copy_tbps():
    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    a.fill_(1)
    t = median_us(lambda i: b.copy_(a), 10, 2)
    return 2 * n / (t * 1e-6) / 1e12


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bench")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    iters = 10 if args.quick else 50

    cmd = [args.bench] + (["--quick"] if args.quick else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        print(proc.stdout)
        sys.exit(f"{args.bench} failed with {proc.returncode}")
    ours, compress, device = {}, [], {}
    for line in proc.stdout.splitlines():
        if not line.startswith("RESULT "):
            continue
        kv = dict(re.findall(r'(\w+)=("[^"]*"|\S+)', line))
        kind = line.split()[1]
        if kind == "decode":
            ours[(int(kv["batch"]), int(kv["ctx"]), kv["tuple"])] = (float(kv["us"]), int(kv["bytes"]),
                                                                      float(kv["tbps"]))
        elif kind == "compress":
            compress.append(kv)
        elif kind == "device":
            device = kv

    torch_copy = copy_tbps()
    copy = float(device.get("copy_tbps", torch_copy))
    name = device.get("name", torch.cuda.get_device_name()).strip('"')
    lines = []
    lines.append(f"Device: {name}, {torch.cuda.get_device_properties(0).multi_processor_count} SMs; "
                 f"date {datetime.date.today().isoformat()}; torch {torch.__version__}")
    lines.append(f"Device-to-device copy (read+write): {copy:.2f} TB/s (cudaMemcpy), {torch_copy:.2f} TB/s (torch)")
    lines.append("")
    lines.append("| batch | context | tuple | cache bytes | moend us | moend TB/s | % of copy BW | "
                 "SDPA fp16 us | SDPA TB/s | speedup vs SDPA |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    sdpa = {}
    for (batch, ctx, tup) in sorted(ours):
        if (batch, ctx) not in sdpa:
            sdpa[(batch, ctx)] = sdpa_us(batch, ctx, iters)
        st, sb = sdpa[(batch, ctx)]
        us, by, tb = ours[(batch, ctx, tup)]
        lines.append(f"| {batch} | {ctx // 1024}k | {tup} | {by / 1e6:.1f} MB | {us:.1f} | {tb:.2f} | "
                     f"{100 * tb / copy:.0f}% | {st:.1f} | {sb / (st * 1e-6) / 1e12:.2f} | {st / us:.2f}x |")
    lines.append("")
    lines.append("Prefill compression, one 7B-shaped layer (28q/4kv/D128), 16k tokens, device-resident fp32 "
                 "inputs, 28 layers in sequence:")
    lines.append("")
    lines.append("| tuple | score us | select us | quantize us | per layer us | 28 layers ms |")
    lines.append("|---|---|---|---|---|---|")
    for kv in compress:
        lines.append(f"| {kv['tuple']} | {kv['score_us']} | {kv['select_us']} | {kv['quantize_us']} | "
                     f"{kv['layer_us']} | {kv['total_ms']} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
