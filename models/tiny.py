#!/usr/bin/env python3
"""Tiny random llama-architecture GGUFs for tests: shapes the default model (SmolLM2) does not cover.

    python models/tiny.py --out DIR [NAME ...]   write DIR/NAME.gguf (all shapes by default)
    python models/tiny.py --list                 print the shape names

Weights are random (seeded, so files are reproducible); the vocabulary is a small SentencePiece one:
control tokens, the 256 byte-fallback tokens, and single characters, so any text can be tokenized.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np


@dataclass(frozen=True)
class Shape:
    name: str
    n_head: int
    n_head_kv: int
    head_dim: int
    n_layer: int = 4
    n_ctx: int = 4096
    n_embd: int = 128  # independent of n_head * head_dim (llama.cpp reads key/value lengths), keeps files small
    swa: bool = False  # cohere2: sliding-window layers (window 64) but every fourth: an iSWA cache


SHAPES = {s.name: s for s in (
    Shape("mha-d64", n_head=4, n_head_kv=4, head_dim=64),
    Shape("gqa4-d64", n_head=8, n_head_kv=2, head_dim=64),
    Shape("gqa3-d64", n_head=6, n_head_kv=2, head_dim=64),
    Shape("mha-d128", n_head=4, n_head_kv=4, head_dim=128),
    Shape("gqa8-d128", n_head=8, n_head_kv=1, head_dim=128),
    Shape("mha-d256", n_head=2, n_head_kv=2, head_dim=256, n_layer=3),
    Shape("gqa2-d80", n_head=4, n_head_kv=2, head_dim=80),  # head_dim not a power of two
    # global layers 3, 7, 11, 15: the first two dense (n_dense counts full-attention layers), two sparse
    Shape("swa-mha-d64", n_head=2, n_head_kv=2, head_dim=64, n_layer=16, swa=True),  # n_head*head_dim = n_embd
)}

CHARS = [chr(c) for c in range(0x21, 0x7F)]


def vocab() -> tuple[list[str], list[float], list[int]]:
    T = gguf.TokenType
    toks = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)] + ["\u2581"] + \
           ["\u2581" + c for c in CHARS] + CHARS
    types = [T.UNKNOWN, T.CONTROL, T.CONTROL] + [T.BYTE] * 256 + [T.NORMAL] * (len(toks) - 259)
    scores = [0.0] * 259 + [-float(i) for i in range(len(toks) - 259)]
    return toks, scores, types


def write_model(shape: Shape, path: str | Path, seed: int = 0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    toks, scores, types = vocab()
    n_vocab, e, hd = len(toks), shape.n_embd, shape.head_dim
    ff = 2 * e
    w = gguf.GGUFWriter(str(path), "cohere2" if shape.swa else "llama")
    w.add_name(f"tiny-random-{shape.name}")
    w.add_context_length(shape.n_ctx)
    w.add_embedding_length(e)
    w.add_block_count(shape.n_layer)
    w.add_feed_forward_length(ff)
    w.add_head_count(shape.n_head)
    w.add_head_count_kv(shape.n_head_kv)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    if shape.swa:
        # cohere2's default pattern: layers 3 and 7 attend to the whole context (the ones Adamas serves)
        w.add_logit_scale(1.0)
        w.add_sliding_window(64)
        w.add_layer_norm_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_tokenizer_model("llama")
    w.add_token_list(toks)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)

    def t(name: str, *shape_, f16: bool = True, scale: float = 0.02, ones: bool = False):
        # gguf takes numpy shapes: (ne1, ne0)
        x = np.ones(shape_, np.float32) if ones else rng.standard_normal(shape_, np.float32) * scale
        w.add_tensor(name, x.astype(np.float16) if f16 else x)

    t("token_embd.weight", n_vocab, e, scale=1.0)
    t("output_norm.weight", e, f16=False, ones=True)
    if not shape.swa:  # cohere2 ties the output to the embeddings and has a parallel block (no ffn_norm)
        t("output.weight", n_vocab, e)
    for i in range(shape.n_layer):
        b = f"blk.{i}."
        t(b + "attn_norm.weight", e, f16=False, ones=True)
        if not shape.swa:
            t(b + "ffn_norm.weight", e, f16=False, ones=True)
        # larger q/k weights than usual give peaked attention, so that which tokens are attended matters
        t(b + "attn_q.weight", shape.n_head * hd, e, scale=0.1)
        t(b + "attn_k.weight", shape.n_head_kv * hd, e, scale=0.1)
        t(b + "attn_v.weight", shape.n_head_kv * hd, e)
        t(b + "attn_output.weight", e, shape.n_head * hd)
        t(b + "ffn_gate.weight", ff, e)
        t(b + "ffn_up.weight", ff, e)
        t(b + "ffn_down.weight", e, ff)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="shapes to write (default: all)")
    ap.add_argument("--out", type=Path, help="output directory")
    ap.add_argument("--list", action="store_true", help="print the shape names, one per line")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.list:
        print("\n".join(SHAPES))
        return 0
    if a.out is None:
        ap.error("--out is required")
    unknown = [n for n in a.names if n not in SHAPES]
    if unknown:
        ap.error(f"unknown shape(s) {', '.join(unknown)}; known: {', '.join(SHAPES)}")
    for n in a.names or SHAPES:
        print(write_model(SHAPES[n], a.out / f"{n}.gguf", a.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
