#!/usr/bin/env python3
"""scripts/make_synthetic_model.py's qwen2-tiny, loaded, run and calibrated by moend.

  synthetic_model_test.py MOENDCTL

1. The checkpoint's layout: config.json as Qwen2ForCausalLM writes it, an
   index whose weight map and total size match the shards, >= 2 shards, every
   tensor BF16 with q/k/v biases; BF16 rounding to nearest even.
2. moendctl logits (moend's loader and CPU forward) on 48 token ids, most of
   them above 255, against an independent float64 numpy forward of the same
   files (own safetensors reader, Hugging Face's Qwen2 math).
3. moendctl calibrate on the CPU with token-id calibration data (2 sequences
   of 512 ids): a 2 x 112 table, (1,16,16) exactly 0, errors that grow as
   bits and keep ratios fall; an id outside the vocabulary is a clear error.
4. Depth: a 28-layer variant of the same width (vocabulary 1024) keeps its residual stream,
   attention logits and output logits in sane ranges (numpy forward).
"""
import json
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(SRC, "scripts"))
import make_synthetic_model as gen  # noqa: E402

MOENDCTL = None
VOCAB = 152064
TOKEN_MAGIC = b"\x93MOETOK\x01"


def read_safetensors(path):
    """{name: float32 array} of a BF16/F32 safetensors file, parsed here."""
    with open(path, "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    data = memoryview(raw)[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        if info["dtype"] == "BF16":
            bits = np.frombuffer(data[begin:end], dtype="<u2").astype(np.uint32) << 16
            out[name] = bits.view(np.float32).reshape(info["shape"])
        else:
            out[name] = np.frombuffer(data[begin:end], dtype="<f4").reshape(info["shape"])
    return header, out


def load_checkpoint(folder):
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(folder, "model.safetensors.index.json")) as f:
        index = json.load(f)
    weights, headers = {}, {}
    for shard in sorted(set(index["weight_map"].values())):
        header, tensors = read_safetensors(os.path.join(folder, shard))
        headers[shard] = header
        weights.update(tensors)
    return cfg, index, headers, weights


def rope_tables(cfg, n):
    """cos, sin [n, D/2] computed as transformers does (float32)."""
    d = cfg["hidden_size"] // cfg["num_attention_heads"]
    inv_freq = (1.0 / (np.float32(cfg["rope_theta"]) ** (np.arange(0, d, 2, dtype=np.int64).astype(np.float32) / d)))
    angles = np.arange(n, dtype=np.float32)[:, None] * inv_freq.astype(np.float32)[None, :]
    return np.cos(angles).astype(np.float64), np.sin(angles).astype(np.float64)


def forward(cfg, w, ids, stats=None):
    """Qwen2 forward in float64: logits [n, vocab]. `stats` collects per-layer
    residual RMS and attention-logit standard deviations."""
    n, hq, hkv = len(ids), cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d, eps = cfg["hidden_size"] // hq, cfg["rms_norm_eps"]
    f64 = lambda name: w[name].astype(np.float64)

    def rms_norm(x, weight):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight

    def rotate(t, cos, sin):  # t [heads, n, D]
        a, b = t[..., : d // 2], t[..., d // 2:]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)

    cos, sin = rope_tables(cfg, n)
    x = w["model.embed_tokens.weight"][ids].astype(np.float64)
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        h = rms_norm(x, f64(p + "input_layernorm.weight"))
        proj = {}
        for name, heads in (("q", hq), ("k", hkv), ("v", hkv)):
            y = h @ f64(p + f"self_attn.{name}_proj.weight").T + f64(p + f"self_attn.{name}_proj.bias")
            proj[name] = y.reshape(n, heads, d).transpose(1, 0, 2)
        q, k, v = rotate(proj["q"], cos, sin), rotate(proj["k"], cos, sin), proj["v"]
        k, v = np.repeat(k, hq // hkv, axis=0), np.repeat(v, hq // hkv, axis=0)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(d)
        if stats is not None:
            stats.setdefault("score_std", []).append(float(np.std(s[:, np.tril_indices(n)[0], np.tril_indices(n)[1]])))
        s = s + mask
        pr = np.exp(s - s.max(axis=-1, keepdims=True))
        pr /= pr.sum(axis=-1, keepdims=True)
        attn = (pr @ v).transpose(1, 0, 2).reshape(n, hq * d)
        x = x + attn @ f64(p + "self_attn.o_proj.weight").T
        h = rms_norm(x, f64(p + "post_attention_layernorm.weight"))
        g, u = h @ f64(p + "mlp.gate_proj.weight").T, h @ f64(p + "mlp.up_proj.weight").T
        x = x + (g / (1 + np.exp(-g)) * u) @ f64(p + "mlp.down_proj.weight").T
        if stats is not None:
            stats.setdefault("residual_rms", []).append(float(np.sqrt(np.mean(x * x))))
    x = rms_norm(x, f64("model.norm.weight"))
    return x @ f64("lm_head.weight").T


def run(*args, expect=0):
    r = subprocess.run([MOENDCTL, *args], capture_output=True, text=True, timeout=600)
    if r.returncode != expect:
        raise AssertionError(f"moendctl {' '.join(args)}: exit {r.returncode}, want {expect}\n{r.stderr}")
    return r


class SyntheticModelTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="moend_synthetic_")
        cls.dir = os.path.join(cls.tmp.name, "qwen2-tiny")
        cls.tokens = os.path.join(cls.tmp.name, "calibration_ids.bin")
        subprocess.run([sys.executable, os.path.join(SRC, "scripts", "make_synthetic_model.py"), "--shape",
                        "qwen2-tiny", "--out", cls.dir, "--seed", "7", "--jobs", "2", "--tokens", cls.tokens,
                        "--sequences", "2", "--seq-len", "512"], check=True, timeout=600)
        cls.cfg, cls.index, cls.headers, cls.w = load_checkpoint(cls.dir)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_layout_is_a_sharded_bf16_qwen2_checkpoint(self):
        c = self.cfg
        self.assertEqual(c["architectures"], ["Qwen2ForCausalLM"])
        self.assertEqual((c["model_type"], c["num_hidden_layers"], c["hidden_size"], c["num_attention_heads"],
                          c["num_key_value_heads"], c["vocab_size"], c["torch_dtype"]),
                         ("qwen2", 2, 256, 4, 2, VOCAB, "bfloat16"))
        self.assertEqual((c["rope_theta"], c["rms_norm_eps"], c["tie_word_embeddings"], c["use_sliding_window"]),
                         (1e6, 1e-6, False, False))
        self.assertGreaterEqual(len(self.headers), 2)
        total = 0
        for shard, header in self.headers.items():
            size = os.path.getsize(os.path.join(self.dir, shard))
            header_len = int.from_bytes(open(os.path.join(self.dir, shard), "rb").read(8), "little")
            self.assertEqual(header_len % 8, 0)
            end = 0
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                self.assertEqual(info["dtype"], "BF16", name)
                self.assertEqual(self.index["weight_map"][name], shard)
                b, e = info["data_offsets"]
                self.assertEqual(e - b, 2 * int(np.prod(info["shape"])), name)
                end = max(end, e)
                total += e - b
            self.assertEqual(size, 8 + header_len + end)
        self.assertEqual(self.index["metadata"]["total_size"], total)
        self.assertEqual(set(self.index["weight_map"]), set(self.w))
        for l in range(2):
            for name, rows in (("q", 256), ("k", 128), ("v", 128)):
                self.assertEqual(self.w[f"model.layers.{l}.self_attn.{name}_proj.bias"].shape, (rows,))
        self.assertEqual(self.w["lm_head.weight"].shape, (VOCAB, 256))
        # The scales the generator documents (N(0, 1/fan_in) matrices, N(0, 1) embeddings).
        self.assertAlmostEqual(float(np.std(self.w["model.layers.0.mlp.down_proj.weight"])), 1 / np.sqrt(1344), delta=1e-3)
        self.assertAlmostEqual(float(np.std(self.w["model.embed_tokens.weight"])), 1.0, delta=1e-2)

    def test_bf16_rounds_to_nearest_even(self):
        one = 1.0
        ulp = 2.0 ** -7  # BF16 spacing at 1
        x = np.array([one, one + ulp / 2, one + 3 * ulp / 2, one + ulp / 2 + 2 ** -20, -(one + ulp / 2),
                      3.4e38, np.inf, np.nan], dtype=np.float32)
        got = gen.to_bf16(x)
        want = [0x3F80, 0x3F80, 0x3F82, 0x3F81, 0xBF80, 0x7F80, 0x7F80]
        self.assertEqual([int(v) for v in got[:7]], want)
        self.assertEqual(int(got[7]) & 0x7F80, 0x7F80)
        self.assertNotEqual(int(got[7]) & 0x007F, 0)  # still a NaN

    def test_moend_forward_matches_numpy(self):
        rng = np.random.default_rng(3)
        ids = rng.integers(0, VOCAB, size=48)
        ids[:3] = [0, 255, VOCAB - 1]
        self.assertGreater(int(np.sum(ids > 255)), 40)
        path = os.path.join(self.tmp.name, "input_ids.bin")
        with open(path, "wb") as f:
            f.write(TOKEN_MAGIC + ids.astype("<u4").tobytes())
        out = os.path.join(self.tmp.name, "logits.f32")
        run("logits", "--model", self.dir, "--input", path, "--out", out, "--threads", "2")
        got = np.fromfile(out, dtype="<f4").reshape(len(ids), VOCAB)
        want = forward(self.cfg, self.w, ids)
        scale = float(np.max(np.abs(want)))
        err = float(np.max(np.abs(got - want)))
        print(f"logits: max |moend - numpy| {err:.3g}, max |logit| {scale:.3g}")
        self.assertGreater(scale, 1.0)
        self.assertLess(err, 1e-4 * scale)
        np.testing.assert_array_equal(np.argmax(got, axis=1), np.argmax(want, axis=1))

    def test_cpu_calibration_with_token_ids(self):
        table_path = os.path.join(self.tmp.name, "table.json")
        run("calibrate", "--model", self.dir, "--data", self.tokens, "--seq-len", "512", "--probes", "128",
            "--out", table_path, "--threads", "2")
        with open(table_path) as f:
            table = json.load(f)
        self.assertEqual((table["num_layers"], table["num_kv_heads"], table["head_dim"], table["samples"]),
                         (2, 2, 64, 2))
        tuples = [(t["keep"], t["kbits"], t["vbits"]) for t in table["tuples"]]
        self.assertEqual(len(tuples), 112)
        s = np.array(table["s"])
        self.assertEqual(s.shape, (2, 112))
        self.assertTrue(np.all(np.isfinite(s)) and np.all(s >= 0))
        at = lambda layer, t: s[layer, tuples.index(t)]
        for layer in range(2):
            self.assertEqual(at(layer, (1.0, 16, 16)), 0.0)
            self.assertGreater(at(layer, (1.0, 2, 16)), at(layer, (1.0, 4, 16)))
            self.assertGreater(at(layer, (1.0, 4, 16)), at(layer, (1.0, 8, 16)))
            self.assertGreater(at(layer, (1.0, 8, 16)), 0.0)
            self.assertGreater(at(layer, (1.0, 16, 2)), at(layer, (1.0, 16, 8)))
            self.assertGreater(at(layer, (0.25, 16, 16)), at(layer, (0.75, 16, 16)))
            self.assertGreater(at(layer, (0.75, 16, 16)), 0.0)

    def test_ids_outside_the_vocabulary_are_a_clear_error(self):
        bad = os.path.join(self.tmp.name, "bad_ids.bin")
        ids = np.zeros(512, dtype="<u4")
        ids[300] = VOCAB
        with open(bad, "wb") as f:
            f.write(TOKEN_MAGIC + ids.tobytes())
        r = run("calibrate", "--model", self.dir, "--data", bad, "--seq-len", "512", "--probes", "128", "--out",
                os.path.join(self.tmp.name, "never.json"), expect=2)
        self.assertIn(f"sequence 0: token id {VOCAB} at position 300 is outside the model's vocabulary [0, {VOCAB})",
                      r.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.tmp.name, "never.json")))

    def test_28_layers_stay_numerically_sane(self):
        deep = os.path.join(self.tmp.name, "deep")
        subprocess.run([sys.executable, os.path.join(SRC, "scripts", "make_synthetic_model.py"), "--shape",
                        "qwen2-tiny", "--layers", "28", "--vocab", "1024", "--out", deep, "--seed", "8", "--jobs", "2"], check=True,
                       timeout=600)
        cfg, _, _, w = load_checkpoint(deep)
        self.assertEqual(cfg["num_hidden_layers"], 28)
        stats = {}
        logits = forward(cfg, w, np.random.default_rng(4).integers(0, 1024, size=96), stats)
        rms, score_std = stats["residual_rms"], stats["score_std"]
        print("residual RMS by layer:", " ".join(f"{v:.2f}" for v in rms))
        print("attention logit std by layer:", " ".join(f"{v:.2f}" for v in score_std))
        print(f"output logits std {np.std(logits):.2f}")
        # Each layer adds O(1): the RMS grows like sqrt(layers), never vanishes
        # or explodes; attention is neither uniform nor one-hot; logits O(1).
        self.assertTrue(all(0.5 < v < 4 * np.sqrt(l + 2) for l, v in enumerate(rms)), rms)
        self.assertTrue(all(rms[l + 1] > 0.7 * rms[l] for l in range(27)), rms)
        self.assertTrue(all(0.3 < v < 3 for v in score_std), score_std)
        self.assertTrue(0.3 < float(np.std(logits)) < 3)


if __name__ == "__main__":
    MOENDCTL = sys.argv.pop(1)
    unittest.main(verbosity=2)
