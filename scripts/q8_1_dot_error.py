"""How far a Q4_1 model's matrix-vector products are from exact, computed as the CPU and as CUDA compute them.

Both backends round the activations to q8_1 blocks (32 int8 values, a scale d and a block sum s) and take the
weight block's offset m times s. The CPU stores s = d * (sum of the rounded values); CUDA (quantize_q8_1, without
patch 0027) the sum of the float values, and multiplies the scales in half precision (__hmul2); patch 0027 gives
CUDA the CPU's sums and float products. With the rounded
sum the offset term sees the same activations as the integer term, so the two cancel the rounding together; with
the float sum they do not. This prints, for a few layers' projections of a real model, each method's relative L2
error against the exact product of the same (dequantized) weights, for activations drawn as the model sees them
(a standard normal vector through the layer's RMS norm; SwiGLU of that for ffn_down).

    python scripts/q8_1_dot_error.py SmolLM2-135M-Instruct.Q4_1.gguf [--layers 0,5,15,29]
"""
import argparse

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import GGUFReader, quants


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--layers", default="0,5,15,29")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    r = GGUFReader(a.model)
    tensors = {t.name: t for t in r.tensors}

    def deq(name):
        t = tensors[name]
        return quants.dequantize(t.data, t.tensor_type).reshape([int(x) for x in reversed(t.shape.tolist())])

    def q4_1_blocks(name):  # per row and block: d, m (f16) and the 32 unsigned nibbles (low ones first)
        t = tensors[name]
        if t.tensor_type != QT.Q4_1:
            raise SystemExit(f"{name} is {t.tensor_type.name}, not Q4_1")
        b = np.asarray(t.data).reshape(-1, 20)
        d = b[:, 0:2].copy().view(np.float16).astype(np.float32)
        m = b[:, 2:4].copy().view(np.float16).astype(np.float32)
        q = np.concatenate([b[:, 4:] & 0x0F, b[:, 4:] >> 4], axis=1).astype(np.int32)
        rows, nb = int(t.shape[1]), int(t.shape[0])//32
        return d.reshape(rows, nb), m.reshape(rows, nb), q.reshape(rows, nb, 32)

    def half(x):
        return np.asarray(x, np.float16).astype(np.float32)

    def products(name, x):
        d4, m4, q4 = q4_1_blocks(name)
        xb = x.reshape(-1, 32)
        amax = np.abs(xb).max(1)
        d8 = amax/127
        q8 = np.round(xb/np.where(d8 > 0, d8, 1)[:, None]).astype(np.int32)
        sumi = (q4*q8[None]).sum(2)
        d8h = half(d8)
        cpu = (sumi*(d4*d8h) + m4*half(d8*q8.sum(1))).sum(1)        # ggml-cpu: float scale products
        cuda = (sumi*half(d4*d8h) + half(m4*half(xb.sum(1)))).sum(1)  # ggml-cuda: float sum, __hmul2
        return cpu, cuda, cpu  # with patch 0027 CUDA does the CPU's arithmetic

    def rms(x, w):
        return (x/np.sqrt(np.mean(x.astype(np.float64)**2) + 1e-5)*w).astype(np.float32)

    rng = np.random.default_rng(a.seed)
    print("| layer | product | CPU | CUDA | CUDA with patch 0027 |\n|---:|---|---:|---:|---:|")
    for il in [int(v) for v in a.layers.split(",")]:
        xa = rms(rng.standard_normal(deq(f"blk.{il}.attn_norm.weight").shape[0]).astype(np.float32),
                 deq(f"blk.{il}.attn_norm.weight"))
        xf = rms(rng.standard_normal(xa.shape[0]).astype(np.float32), deq(f"blk.{il}.ffn_norm.weight"))
        g, u = deq(f"blk.{il}.ffn_gate.weight") @ xf, deq(f"blk.{il}.ffn_up.weight") @ xf
        xd = (g/(1 + np.exp(-g))*u).astype(np.float32)
        for proj, x in (("attn_q", xa), ("attn_k", xa), ("attn_v", xa), ("ffn_up", xf), ("ffn_down", xd)):
            name = f"blk.{il}.{proj}.weight"
            exact = deq(name) @ x
            errs = [np.linalg.norm(y - exact)/np.linalg.norm(exact) for y in products(name, x)]
            print(f"| {il} | {proj} | " + " | ".join(f"{e:.2e}" for e in errs) + " |")


if __name__ == "__main__":
    main()
