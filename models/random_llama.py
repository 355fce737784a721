#!/usr/bin/env python3
"""Random-weight llama GGUFs in the exact tensor shapes of real 7B/8B models, for decode speed measurements.

    python models/random_llama.py OUT.gguf --shape 7b-mha|8b-gqa [--layers N]

Weights are written directly as Q4_0 (output.weight as Q6_K, norms F32), the types `llama-quantize ... Q4_0`
gives, without an F16 file in between: speed does not depend on the weight values, only on types and shapes.
One random block pattern is tiled over every tensor (seconds instead of minutes for 4 GB), with small
scales so that activations stay finite. The vocabulary is a minimal SentencePiece one (as in
../shared/tools/gen_random_llama.py).
"""
from __future__ import annotations

import argparse
import sys

import gguf
import numpy as np

SHAPES = {
    # name: (n_layer, n_embd, n_head, n_head_kv, n_ff, n_vocab)
    "7b-mha": (32, 4096, 32, 32, 11008, 32000),
    "8b-gqa": (32, 4096, 32, 8, 14336, 32000),
}

QK4_0, Q4_0_BYTES = 32, 18      # f16 scale + 16 bytes of nibbles
QK_K, Q6_K_BYTES = 256, 210     # ql[128] qh[64] scales[16] f16 d


def _pattern(rng: np.random.Generator, block_bytes: int, n_blocks: int, scale_off: int, scale: float) -> np.ndarray:
    blk = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    d = np.full(n_blocks, scale, dtype=np.float16).view(np.uint8).reshape(n_blocks, 2)
    blk[:, scale_off:scale_off + 2] = d
    return blk.reshape(-1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--shape", choices=sorted(SHAPES), required=True)
    ap.add_argument("--layers", type=int, help="override the layer count (quick checks)")
    ap.add_argument("--ctx", type=int, default=131072 + 4096)
    a = ap.parse_args(argv)

    n_layer, n_embd, n_head, n_head_kv, n_ff, n_vocab = SHAPES[a.shape]
    n_layer = a.layers or n_layer
    hd = n_embd // n_head
    rng = np.random.default_rng(0)
    q4 = _pattern(rng, Q4_0_BYTES, 1 << 16, 0, 0.002)
    q6 = _pattern(rng, Q6_K_BYTES, 1 << 12, Q6_K_BYTES - 2, 0.0002)
    q6.reshape(-1, Q6_K_BYTES)[:, 192:208] = 1  # small positive sub-block scales

    w = gguf.GGUFWriter(a.out, "llama")
    w.add_name(f"random-{a.shape}")
    w.add_context_length(a.ctx)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
    toks = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    toks += [f"t{i}" for i in range(n_vocab - len(toks))]
    w.add_tokenizer_model("llama")
    w.add_token_list(toks)
    w.add_token_scores([0.0] * n_vocab)
    w.add_token_types([2, 3, 3] + [6] * 256 + [1] * (n_vocab - 259))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    def quant(name: str, rows: int, cols: int, pat: np.ndarray, qk: int, bb: int, qtype) -> None:
        nbytes = rows * cols // qk * bb
        data = np.resize(pat, nbytes).reshape(rows, cols // qk * bb)
        w.add_tensor(name, data, raw_dtype=qtype)  # the shape is given in bytes per row

    def q4_0(name: str, rows: int, cols: int) -> None:
        quant(name, rows, cols, q4, QK4_0, Q4_0_BYTES, gguf.GGMLQuantizationType.Q4_0)

    def norm(name: str) -> None:
        w.add_tensor(name, np.ones(n_embd, dtype=np.float32))

    q4_0("token_embd.weight", n_vocab, n_embd)
    norm("output_norm.weight")
    quant("output.weight", n_vocab, n_embd, q6, QK_K, Q6_K_BYTES, gguf.GGMLQuantizationType.Q6_K)
    kv = n_head_kv * hd
    for i in range(n_layer):
        b = f"blk.{i}."
        norm(b + "attn_norm.weight")
        norm(b + "ffn_norm.weight")
        q4_0(b + "attn_q.weight", n_embd, n_embd)
        q4_0(b + "attn_k.weight", kv, n_embd)
        q4_0(b + "attn_v.weight", kv, n_embd)
        q4_0(b + "attn_output.weight", n_embd, n_embd)
        q4_0(b + "ffn_gate.weight", n_ff, n_embd)
        q4_0(b + "ffn_up.weight", n_ff, n_embd)
        q4_0(b + "ffn_down.weight", n_embd, n_ff)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()
    print(f"wrote {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
