#!/usr/bin/env python3
"""Writes a Qwen2 checkpoint with random weights in the Hugging Face layout.

  make_synthetic_model.py --shape qwen2-7b|qwen2-tiny --out DIR [--seed S]
                          [--layers N] [--vocab V] [--shard-mb MB] [--jobs J]
                          [--tokens FILE --sequences N --seq-len L]

DIR gets config.json (as Qwen2ForCausalLM writes it), model.safetensors.index.json
and the shards model-0000i-of-0000n.safetensors, BF16 (rounded to nearest even
from float32). Shapes:
  qwen2-7b:   28 layers, hidden 3584, 28 query / 4 KV heads of dim 128,
              intermediate 18944, vocab 152064 (7.6e9 parameters, 15.2 GB);
  qwen2-tiny: 2 layers, hidden 256, 4 query / 2 KV heads of dim 64,
              intermediate 1344, vocab 152064 (the same structure, 0.16 GB).
Both: q/k/v bias, untied lm_head, RoPE theta 1e6, RMSNorm eps 1e-6.
--layers and --vocab override the layer count and the vocabulary (a deep,
narrow model for sanity checks).

The scales keep a forward numerically sane at any depth: every matrix is
N(0, 1/fan_in), so each projection maps unit-RMS inputs to unit-RMS outputs
(attention logits q.k/sqrt(D) ~ N(0, 1)); embeddings are N(0, 1); each layer
adds O(1) to the residual stream, whose RMS grows like sqrt(layers) and is
renormalized before every use; norm weights 1 + N(0, 0.1^2), biases
N(0, 0.2^2).

Memory stays bounded: tensors are generated and written in chunks of at most
16M elements (os.pwrite into preallocated shards), --jobs processes at a time.
The values depend only on --seed, the tensor's name and the chunk index, not
on --jobs.

--tokens FILE also writes N random calibration sequences of L token ids in
[0, vocab) in moend's token-id format (worker/calibrator.h): the 8 bytes
0x93 'M' 'O' 'E' 'T' 'O' 'K' 0x01, then uint32 little-endian ids.
"""
import argparse
import json
import multiprocessing
import os
import sys
import zlib

import numpy as np

SHAPES = {
    "qwen2-7b": dict(layers=28, hidden=3584, heads=28, kv_heads=4, inter=18944, vocab=152064, shard_mb=4000),
    "qwen2-tiny": dict(layers=2, hidden=256, heads=4, kv_heads=2, inter=1344, vocab=152064, shard_mb=64),
}
CHUNK = 1 << 24  # elements generated at a time
TOKEN_MAGIC = b"\x93MOETOK\x01"


def config_json(s):
    """config.json as transformers' Qwen2Config.save_pretrained writes it."""
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151643,
        "hidden_act": "silu",
        "hidden_size": s["hidden"],
        "initializer_range": 0.02,
        "intermediate_size": s["inter"],
        "max_position_embeddings": 131072,
        "max_window_layers": s["layers"],
        "model_type": "qwen2",
        "num_attention_heads": s["heads"],
        "num_hidden_layers": s["layers"],
        "num_key_value_heads": s["kv_heads"],
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "sliding_window": 131072,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.43.1",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": s["vocab"],
    }


def tensors(s):
    """(name, shape, kind) in Hugging Face's order; kind picks the distribution."""
    h, d = s["hidden"], s["hidden"] // s["heads"]
    q, kv, inter = s["heads"] * d, s["kv_heads"] * d, s["inter"]
    out = [("model.embed_tokens.weight", (s["vocab"], h), "embed")]
    for l in range(s["layers"]):
        p = f"model.layers.{l}."
        out += [
            (p + "input_layernorm.weight", (h,), "norm"),
            (p + "self_attn.q_proj.weight", (q, h), "matrix"),
            (p + "self_attn.q_proj.bias", (q,), "bias"),
            (p + "self_attn.k_proj.weight", (kv, h), "matrix"),
            (p + "self_attn.k_proj.bias", (kv,), "bias"),
            (p + "self_attn.v_proj.weight", (kv, h), "matrix"),
            (p + "self_attn.v_proj.bias", (kv,), "bias"),
            (p + "self_attn.o_proj.weight", (h, q), "matrix"),
            (p + "post_attention_layernorm.weight", (h,), "norm"),
            (p + "mlp.gate_proj.weight", (inter, h), "matrix"),
            (p + "mlp.up_proj.weight", (inter, h), "matrix"),
            (p + "mlp.down_proj.weight", (h, inter), "matrix"),
        ]
    out += [("model.norm.weight", (h,), "norm"), ("lm_head.weight", (s["vocab"], h), "matrix")]
    return out


def to_bf16(x):
    """float32 array -> uint16 BF16 bits, round to nearest even (NaN stays NaN)."""
    bits = x.view(np.uint32)
    rounded = (bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = (bits[nan] >> np.uint32(16)) | np.uint32(0x40)
    return rounded.astype(np.uint16)


def values(kind, shape, count, rng):
    """`count` float32 values of a tensor of `kind` and `shape`."""
    if kind == "norm":
        return (1.0 + 0.1 * rng.standard_normal(count, dtype=np.float32)).astype(np.float32)
    scale = {"embed": 1.0, "bias": 0.2, "matrix": 1.0 / np.sqrt(shape[-1])}[kind]
    return rng.standard_normal(count, dtype=np.float32) * np.float32(scale)


def write_chunk(job):
    """Generates elements [begin, begin + count) of one tensor and writes them."""
    path, file_offset, name, kind, shape, chunk, begin, count, seed = job
    key = zlib.crc32(name.encode())
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, key, chunk])))
    data = to_bf16(values(kind, shape, count, rng))
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data.tobytes(), file_offset + 2 * begin)
    finally:
        os.close(fd)
    return count


def plan_shards(specs, shard_bytes):
    """Greedy packing in order; a tensor larger than the limit gets its own shard."""
    shards, current, size = [], [], 0
    for t in specs:
        nbytes = 2 * int(np.prod(t[1]))
        if current and size + nbytes > shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(t)
        size += nbytes
    if current:
        shards.append(current)
    return shards


def write_model(args, shape):
    os.makedirs(args.out, exist_ok=True)
    specs = tensors(shape)
    shards = plan_shards(specs, args.shard_mb * 1000 * 1000)
    n = len(shards)
    weight_map, jobs, total = {}, [], 0
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        path = os.path.join(args.out, fname)
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name, tshape, _ in shard:
            nbytes = 2 * int(np.prod(tshape))
            header[name] = {"dtype": "BF16", "shape": list(tshape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
            weight_map[name] = fname
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # as safetensors does: data 8-byte aligned
        data_start = 8 + len(text)
        with open(path, "wb") as f:
            f.write(len(text).to_bytes(8, "little"))
            f.write(text)
            f.truncate(data_start + offset)
        for name, tshape, kind in shard:
            elements = int(np.prod(tshape))
            begin_bytes = header[name]["data_offsets"][0]
            for chunk, begin in enumerate(range(0, elements, CHUNK)):
                jobs.append((path, data_start + begin_bytes, name, kind, tshape, chunk, begin,
                             min(CHUNK, elements - begin), args.seed))
        total += offset
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(args.out, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config_json(shape), f, indent=2)
    if args.jobs == 1:
        for job in jobs:
            write_chunk(job)
    else:
        with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
            for _ in pool.imap_unordered(write_chunk, jobs):
                pass
    params = sum(int(np.prod(t[1])) for t in specs)
    print(f"wrote {args.out}: {params} parameters, {total} bytes in {n} shards", flush=True)


def write_tokens(args, vocab):
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([args.seed, 0x70C])))
    ids = rng.integers(0, vocab, size=args.sequences * args.seq_len, dtype=np.uint32)
    with open(args.tokens, "wb") as f:
        f.write(TOKEN_MAGIC)
        f.write(ids.astype("<u4").tobytes())
    print(f"wrote {args.tokens}: {args.sequences} sequences of {args.seq_len} token ids", flush=True)


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", required=True, choices=sorted(SHAPES))
    p.add_argument("--out", required=True, help="folder to write the checkpoint into")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layers", type=int, help="override the layer count")
    p.add_argument("--vocab", type=int, help="override the vocabulary size")
    p.add_argument("--shard-mb", type=int, help="largest shard in MB (default: 4000, tiny: 64)")
    p.add_argument("--jobs", type=int, default=min(16, os.cpu_count() or 1))
    p.add_argument("--tokens", help="also write random calibration token ids to this file")
    p.add_argument("--sequences", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=16384)
    args = p.parse_args(argv)
    shape = dict(SHAPES[args.shape])
    if args.layers is not None:
        if args.layers < 1:
            p.error(f"--layers {args.layers} must be at least 1")
        shape["layers"] = args.layers
    if args.vocab is not None:
        if args.vocab < 1:
            p.error(f"--vocab {args.vocab} must be at least 1")
        shape["vocab"] = args.vocab
    if args.shard_mb is None:
        args.shard_mb = shape["shard_mb"]
    if args.shard_mb < 1 or args.jobs < 1 or args.seed < 0:
        p.error("--shard-mb and --jobs must be positive, --seed non-negative")
    if args.tokens and (args.sequences < 1 or args.seq_len < 1):
        p.error("--sequences and --seq-len must be positive")
    write_model(args, shape)
    if args.tokens:
        write_tokens(args, shape["vocab"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
