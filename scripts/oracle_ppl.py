#!/usr/bin/env python3
r"""Reference perplexity of a llama-architecture GGUF under sparse decode attention, in numpy.

Measures the ceiling of budget-B token selection: how much perplexity a decode step loses when each query
head attends only B cached tokens, chosen by the true attention scores (oracle) or by Adamas' codes.
A measurement script, not part of the package or its tests.

The protocol is that of `python -m adamas_gguf eval ppl`: every token after the first is predicted by a
decode step. Causality makes that equal to one batched forward in which each query position t attends
only positions <= t, so the whole text runs layer by layer with matmuls over all T tokens; only the
attention is done per query row, with its own selection among the positions <= t:

  dense    every visible position
  oracle   the true top-B positions by exact q.k, per query head
  adamas   Adamas as in ggml_adamas: orthonormal Walsh-Hadamard transform of the post-RoPE q and k,
           2-bit codes with per-vector RMS thresholds (code 0: y <= -c*rms, 1: <= 0, 2: <= c*rms, 3: above;
           c_q = 0.5, c_k = 1.0; keys coded from their F16-rounded values, as the F16 cache stores them),
           the B nearest by L1 distance between codes, ties to the higher position
  dot      the same stored codes, ranked by the dot product of the centred code values (-1.5 .. 1.5)

Layers below --n-dense are dense, and a row with t + 1 <= B visible positions is dense (llama.cpp runs
such steps dense). A sparse row is an exact float32 softmax over the selected positions (ggml_adamas_attn).

By default the forward imitates llama.cpp's CPU arithmetic (llama.cpp's eval ppl with flash attention and
an F16 cache): before each weight matmul the activations are quantized as the weight's vec_dot_type does it
(Q8_0 for Q8_0 weights, Q8_1 for Q4_1, whose minima multiply Q8_1's F16 block sums), K and V are rounded to
F16, and dense rows follow the CPU flash-attention kernel (q in F16, online softmax, F16 V accumulator).
--f32 turns that off. Only Q4_1, Q8_0 and F32 tensors are handled (the default model's types).

How close it is: fed llama.cpp's own inputs, every matmul agrees to ~1e-6 relative, the Adamas selections
are identical and sparse rows agree to ~3e-6, dense flash-attention rows to ~2e-4 (F16 rounding). Over a
whole text the two still drift apart, because a rounding difference flips an 8-bit activation somewhere
and this small model amplifies it: per-token NLLs differ by ~0.07 on average, the perplexity of 2048 tokens
by a few tenths of a percent, a noise that llama.cpp's own sparse-vs-dense comparisons carry too. --seeds
measures it (runs with the embeddings perturbed by 1e-6).

Tokens are those of `eval ppl` (llama.cpp's tokenizer through adamas_gguf's libraries). Threads: the
BLAS thread variables default to 2. A dense run over 2048 tokens takes ~3 minutes on 2 cores (the
flash-attention emulation is sequential over positions), a sparse one ~0.5 minute.

examples (docs/accuracy.md, section 5; each --append adds to the same JSON and .md):
  python scripts/oracle_ppl.py --text /usr/share/common-licenses/GPL-3 --max-tokens 2048 \
      --policy dense oracle adamas dot --budget 16 64 128 256 -o docs/accuracy/oracle-2048.json
  python scripts/oracle_ppl.py --text /usr/share/common-licenses/GPL-3 --max-tokens 2048 \
      --policy dense --seeds 1 2 3 -o docs/accuracy/oracle-2048.json --append
  python scripts/oracle_ppl.py --text /usr/share/common-licenses/GPL-3 --max-tokens 2048 \
      --policy oracle adamas --budget 64 --sink 4 --recent 16 -o docs/accuracy/oracle-2048.json --append
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import sys
import time

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "2")

import numpy as np  # noqa: E402

CHUNK = 256        # query rows per block of sparse rows
CHUNK_DENSE = 512  # query rows per block of dense rows (flash-attention emulation)


# ------------------------------------------------------------------------------------------------
# model

class Model:
    def __init__(self, path: str, emulate: bool = True):
        import gguf
        from gguf.quants import dequantize

        r = gguf.GGUFReader(path)

        def field(key, default=None):
            f = r.fields.get(key)
            if f is None:
                return default
            return f.contents()

        arch = field("general.architecture")
        if arch != "llama":
            raise SystemExit(f"{path}: architecture {arch!r}, this script handles llama only")
        p = arch + "."
        self.n_layer = int(field(p + "block_count"))
        self.n_embd = int(field(p + "embedding_length"))
        self.n_head = int(field(p + "attention.head_count"))
        self.n_head_kv = int(field(p + "attention.head_count_kv", self.n_head))
        self.eps = float(field(p + "attention.layer_norm_rms_epsilon"))
        self.rope_base = float(field(p + "rope.freq_base", 10000.0))
        self.head_dim = int(field(p + "attention.key_length", self.n_embd // self.n_head))
        self.n_rot = int(field(p + "rope.dimension_count", self.head_dim))
        if field(p + "rope.scaling.type") not in (None, "none"):
            raise SystemExit("rope scaling is not handled")
        self.emulate = emulate

        # weights dequantized to float32 ([out, in]); a Q4_1 matrix is kept as its scale part d*q and its
        # per-block minima m separately (see mm)
        w, mins, quantized = {}, {}, set()
        for t in r.tensors:
            a = dequantize(t.data, t.tensor_type)
            a = a.reshape([int(x) for x in reversed(t.shape)]) if a.ndim > 1 else a
            a = np.ascontiguousarray(a, dtype=np.float32)
            if t.tensor_type == gguf.GGMLQuantizationType.Q4_1:
                # block: d (F16), m (F16), 16 bytes of 4-bit q; value = d*q + m
                raw = np.asarray(t.data, dtype=np.uint8).reshape(a.shape[0], -1, 20)
                m = np.ascontiguousarray(raw[:, :, 2:4]).view(np.float16)[..., 0].astype(np.float32)
                a = a - np.repeat(m, 32, axis=1)
                mins[t.name] = m
            elif t.tensor_type not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.Q8_0):
                raise SystemExit(f"{t.name}: type {t.tensor_type.name}; the Q8 emulation handles Q4_1, Q8_0 and F32")
            if t.tensor_type != gguf.GGMLQuantizationType.F32:
                quantized.add(t.name)
            w[t.name] = a
        self.w, self.mins, self.quantized = w, mins, quantized
        self.output_name = "output.weight" if "output.weight" in w else "token_embd.weight"  # tied embeddings
        self.tok_embd = w["token_embd.weight"] + (np.repeat(mins["token_embd.weight"], 32, axis=1)
                                                   if "token_embd.weight" in mins else 0)
        self.out_norm = w["output_norm.weight"]

    def mm(self, x: np.ndarray, name: str) -> np.ndarray:
        """x @ W.T for the weight `name`. Emulating llama.cpp's CPU matmuls, x is first quantized as the
        weight's vec_dot_type does it (Q8_0 for Q8_0 weights, Q8_1 for Q4_1: blocks of 32, 8-bit values
        with an F16 scale), and a Q4_1 weight's minima multiply Q8_1's stored block sums s = F16(d*sum(q))."""
        W, m = self.w[name], self.mins.get(name)
        if not self.emulate or name not in self.quantized:  # F32 weights: F32 activations
            return x @ (W + np.repeat(m, 32, axis=1)).T if m is not None else x @ W.T
        xq, s = q8(x)
        y = xq @ W.T
        return y + s @ m.T if m is not None else y

    def rmsnorm(self, x, g):
        x64 = x.astype(np.float64)
        s = np.sqrt((x64 * x64).mean(-1, keepdims=True) + self.eps)
        return (x / s.astype(np.float32)) * g

    def rope(self, x, pos):
        # llama.cpp LLAMA_ROPE_TYPE_NORM: rotate adjacent pairs (2i, 2i+1) (the GGUF q/k weights are permuted
        # accordingly by the converter)
        n = self.n_rot
        inv = self.rope_base ** (-np.arange(0, n, 2, dtype=np.float64) / n)
        ang = pos[:, None].astype(np.float64) * inv[None, :]
        c = np.cos(ang).astype(np.float32)[:, None, :]
        s = np.sin(ang).astype(np.float32)[:, None, :]
        x0 = x[..., 0:n:2]
        x1 = x[..., 1:n:2]
        out = x.copy()
        out[..., 0:n:2] = x0 * c - x1 * s
        out[..., 1:n:2] = x0 * s + x1 * c
        return out


def q8(x: np.ndarray):
    """x as ggml's quantize_row_q8_0/q8_1 leave it: per block of 32, d = amax/127, q = round(x*127/amax),
    value q*F16(d); also Q8_1's block sums s = F16(d*sum(q)) ([T, n/32])."""
    T, n = x.shape
    assert n % 32 == 0
    xb = x.reshape(T, n // 32, 32)
    amax = np.abs(xb).max(-1, keepdims=True)
    d = amax / np.float32(127.0)
    inv = np.divide(np.float32(127.0), amax, out=np.zeros_like(amax), where=amax > 0)
    q = np.rint(xb * inv)
    s = f16(d[..., 0] * q.sum(-1))
    return (q * f16(d)).reshape(T, n), s


def f16(x):
    return x.astype(np.float16).astype(np.float32)


def hadamard(n: int) -> np.ndarray:
    H = np.ones((1, 1), dtype=np.float32)
    while H.shape[0] < n:
        H = np.block([[H, H], [H, -H]])
    return H / np.float32(math.sqrt(n))


def codes(x: np.ndarray, c: float, H: np.ndarray) -> np.ndarray:
    """2-bit Adamas codes (0..3) of the vectors x[..., D]: WHT, then per-vector RMS thresholds +-c*rms."""
    y = x @ H
    rms = np.sqrt((y.astype(np.float64) ** 2).mean(-1, keepdims=True))
    t = (c * rms).astype(np.float32)
    return ((y > -t).astype(np.int8) + (y > 0) + (y > t)).astype(np.int8)


def thermo(code: np.ndarray) -> np.ndarray:
    """3-bit thermometer of codes [..., D] -> [..., 3D] float32: L1(a, b) = |A| + |B| - 2 A.B."""
    return np.concatenate([(code >= 1), (code >= 2), (code >= 3)], axis=-1).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# attention with selection

POS_SCALE = 8192.0  # > T: keys = rank value * POS_SCALE - position stay exact integers in float32


def fa_f16(S, v, r0):
    """llama.cpp's CPU flash attention for an F16 V cache (ggml_compute_forward_flash_attn_ext_f16_one_chunk,
    one decode row at a time): online softmax over the visible cells in cell order, the V accumulator
    kept in F16 (rounded after every scale and every multiply-add). S: [G, R, n] scaled logits of the
    query positions r0 .. r0+R-1 (causal: position t sees cells 0..t); v: [n, D] (F16 values).
    Returns [G, R, D] float32. Vectorized over rows, sequential over cells, as the kernel is."""
    G, R, n = S.shape
    D = v.shape[1]
    M = np.full((G, R), -np.inf, dtype=np.float32)
    L = np.zeros((G, R), dtype=np.float32)
    acc = np.zeros((G, R, D), dtype=np.float32)  # holds F16 values
    with np.errstate(invalid="ignore", over="ignore"):
        for j in range(n):
            a = max(0, j - r0)  # rows that see cell j: a suffix
            if a >= R:
                break
            s = S[:, a:, j]
            Mo = M[:, a:]
            Mn = np.maximum(Mo, s)
            ms = np.exp(Mo - Mn)  # 1 if no new maximum, 0 at the first cell
            vs = np.exp(s - Mn)   # 1 at a new maximum
            x = acc[:, a:]
            if (ms != 1).any():
                x = f16(x * ms[..., None])
            acc[:, a:] = f16(x + v[j] * vs[..., None])
            L[:, a:] = L[:, a:] * ms + vs
            M[:, a:] = Mn
    return acc / L[..., None]


def softmax_av(S, v):
    """Exact softmax attention in float32 (ggml_adamas_attn): S [..., n] with -inf for dropped cells."""
    m = S.max(-1, keepdims=True)
    P = np.exp(S - m)
    P /= P.sum(-1, keepdims=True)
    return P @ v


def attention(q, k, v, policy, budget, cq=None, ck=None, select="head", n_sink=0, n_recent=0, emulate=True):
    """q: [T, H, D] post-RoPE (F32), k, v: [T, Hkv, D]; cq/ck the per-policy code features.
    A row t is a decode step over the positions <= t; it is dense (every visible position; llama.cpp's
    flash attention when emulating) if policy == "dense" or t + 1 <= budget, else sparse: exact F32 softmax
    over `budget` positions, n_sink oldest and n_recent newest forced in, the rest chosen by the policy's
    ranking, per query head (select="head") or once per KV group by the group's summed score
    (select="group"). Returns [T, H, D]."""
    T, H, D = q.shape
    Hkv = k.shape[1]
    g = H // Hkv
    assert T <= POS_SCALE, f"{T} tokens: the ranking keys handle at most {POS_SCALE:.0f}"
    scale = np.float32(1.0 / math.sqrt(D))
    out = np.empty_like(q)
    q16 = f16(q) if emulate else q  # flash attention converts q to F16 (K's vec_dot_type)
    pos = np.arange(T, dtype=np.float32)
    n_dense_rows = T if policy == "dense" else min(T, budget)  # rows t with t + 1 <= budget
    for hk in range(Hkv):
        hs = slice(hk * g, (hk + 1) * g)
        # dense rows: positions 0 .. n_dense_rows-1, in row blocks
        for t0 in range(0, n_dense_rows, CHUNK_DENSE):
            t1 = min(n_dense_rows, t0 + CHUNK_DENSE)
            S = (q16[t0:t1, hs].transpose(1, 0, 2) @ k[:t1, hk].T) * scale  # [g, R, t1]
            if emulate:
                o = fa_f16(S, v[:t1, hk], t0)
            else:
                invis = np.arange(t1)[None, :] > np.arange(t0, t1)[:, None]
                o = softmax_av(np.where(invis, np.float32(-np.inf), S), v[:t1, hk])
            out[t0:t1, hs] = o.transpose(1, 0, 2)
        # sparse rows
        for t0 in range(n_dense_rows, T, CHUNK):
            t1 = min(T, t0 + CHUNK)
            n = t1
            rows = np.arange(t0, t1)
            invis = np.arange(n)[None, :] > rows[:, None]  # [R, n]
            S = (q[t0:t1, hs].transpose(1, 0, 2) @ k[:n, hk].T) * scale  # F32 q, as ggml_adamas_attn
            if policy == "oracle":
                if select == "head":
                    key = -S
                else:  # the group's summed attention probabilities: the best shared set by mass
                    Sm = np.where(invis[None], np.float32(-np.inf), S)
                    P = np.exp(Sm - Sm.max(-1, keepdims=True))
                    P /= P.sum(-1, keepdims=True)
                    key = -P.sum(0, keepdims=True)
            elif policy == "adamas":  # exact L1 between codes (Hamming distance of thermometer codes)
                nq = cq[t0:t1, hs].sum(-1).T[:, :, None]                  # [g, R, 1]
                nk = ck[:n, hk].sum(-1)[None, None, :]                     # [1, 1, n]
                dist = nq + nk - 2.0 * (cq[t0:t1, hs].transpose(1, 0, 2) @ ck[:n, hk].T)
                if select == "group":
                    dist = dist.sum(0, keepdims=True)
                key = dist * POS_SCALE - pos[None, None, :n]  # ties: the higher position
            elif policy == "dot":
                dot4 = 4.0 * (cq[t0:t1, hs].transpose(1, 0, 2) @ ck[:n, hk].T)  # integers
                if select == "group":
                    dot4 = dot4.sum(0, keepdims=True)
                key = -dot4 * POS_SCALE - pos[None, None, :n]
            else:
                raise ValueError(policy)
            key = np.where(invis[None], np.float32(np.inf), key).astype(np.float32)
            if n_sink or n_recent:
                col = np.arange(n)[None, :]
                forced = (col < n_sink) | ((col > rows[:, None] - n_recent) & ~invis)
                key = np.where(forced[None], np.float32(-np.inf), key)
            kth = np.partition(key, budget - 1, axis=-1)[..., budget - 1:budget]
            drop = (key > kth) | invis[None]  # [1 or g, R, n]
            out[t0:t1, hs] = softmax_av(np.where(drop, np.float32(-np.inf), S), v[:n, hk]).transpose(1, 0, 2)
    return out


def forward_nll(model: Model, tokens, policy="dense", budget=0, n_dense=2, c_q=0.5, c_k=1.0, select="head",
                n_sink=0, n_recent=0, cache=None, jitter=0):
    """NLL of tokens[1:] (float64 array). cache: dict reused between calls for the dense prefix layers.
    jitter: a seed; if nonzero, the input embeddings are multiplied by 1 + 1e-6 N(0, 1) (a perturbation at
    the level of float rounding, to measure how much the result moves with it; cache is then not used)."""
    M = model
    T = len(tokens)
    D, H, Hkv = M.head_dim, M.n_head, M.n_head_kv
    pos = np.arange(T)
    Hm = hadamard(D)
    start = 0
    if jitter:
        cache = None
    if cache is not None and cache.get("n_dense") == n_dense and cache.get("T") == T:
        x, start = cache["x"].copy(), n_dense
    else:
        x = M.tok_embd[np.asarray(tokens)].astype(np.float32)
        if jitter:
            x = x * (1 + 1e-6 * np.random.default_rng(jitter).standard_normal(x.shape)).astype(np.float32)
    for il in range(start, M.n_layer):
        if cache is not None and il == n_dense and start == 0:
            cache.update(n_dense=n_dense, T=T, x=x.copy())  # the dense prefix, the same for every policy
        p = f"blk.{il}."
        w = M.w
        h = M.rmsnorm(x, w[p + "attn_norm.weight"])
        q = M.mm(h, p + "attn_q.weight").reshape(T, H, D)
        k = M.mm(h, p + "attn_k.weight").reshape(T, Hkv, D)
        v = M.mm(h, p + "attn_v.weight").reshape(T, Hkv, D)
        q = M.rope(q, pos)
        k = M.rope(k, pos)
        if M.emulate:
            k, v = f16(k), f16(v)  # the F16 KV cache
        pol = policy if il >= n_dense else "dense"
        cq = ck = None
        if pol in ("adamas", "dot"):
            qc, kc = codes(q, c_q, Hm), codes(k, c_k, Hm)
            if pol == "adamas":
                cq, ck = thermo(qc), thermo(kc)
            else:
                cq, ck = qc.astype(np.float32) - 1.5, kc.astype(np.float32) - 1.5
        a = attention(q, k, v, pol, budget, cq, ck, select, n_sink, n_recent, M.emulate).reshape(T, H * D)
        x = x + M.mm(a, p + "attn_output.weight")
        h = M.rmsnorm(x, w[p + "ffn_norm.weight"])
        gate = M.mm(h, p + "ffn_gate.weight")
        up = M.mm(h, p + "ffn_up.weight")
        act = gate / (1.0 + np.exp(-gate)) * up
        x = x + M.mm(act, p + "ffn_down.weight")
    h = M.rmsnorm(x, M.out_norm)
    nll = np.empty(T - 1)
    tgt = np.asarray(tokens[1:])
    for t0 in range(0, T - 1, 512):
        t1 = min(T - 1, t0 + 512)
        logits = M.mm(h[t0:t1], M.output_name).astype(np.float64)
        mx = logits.max(-1, keepdims=True)
        lse = mx[:, 0] + np.log(np.exp(logits - mx).sum(-1))
        nll[t0:t1] = lse - logits[np.arange(t1 - t0), tgt[t0:t1]]
    return nll


# ------------------------------------------------------------------------------------------------

def tokenize(model_path: str, text: str):
    import adamas_gguf  # noqa: F401  (makes llama_cpp load our libraries)
    import llama_cpp
    llm = llama_cpp.Llama(model_path, vocab_only=True, verbose=False)
    return llm.tokenize(text.encode("utf-8"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="llama-architecture GGUF (default: the package's default model)")
    ap.add_argument("--text", required=True, help="UTF-8 text file")
    ap.add_argument("--max-tokens", type=int, default=2048, help="first N tokens of the text (default 2048)")
    ap.add_argument("--policy", nargs="+", default=["dense", "oracle", "adamas", "dot"],
                    choices=["dense", "oracle", "adamas", "dot"], help="attention policies to run (default: all)")
    ap.add_argument("--budget", type=int, nargs="+", default=[64, 256], help="budgets B (default 64 256)")
    ap.add_argument("--n-dense", type=int, nargs="+", default=[2],
                    help="dense layers below the sparse ones (default 2; several: each is run)")
    ap.add_argument("--select", nargs="+", default=["head"], choices=["head", "group"],
                    help="one selection per query head (default), or one per KV group by the group's summed "
                         "score (oracle: summed attention probabilities); several: each is run")
    ap.add_argument("--sink", type=int, default=0, help="oldest positions always kept, inside the budget")
    ap.add_argument("--recent", type=float, default=0,
                    help="newest positions (the current one included) always kept, inside the budget: "
                         "N (>= 1) or a fraction of the budget")
    ap.add_argument("--thr-q", type=float, default=0.5, help="RMS factor of the query codes (default 0.5)")
    ap.add_argument("--thr-k", type=float, default=1.0, help="RMS factor of the key codes (default 1.0)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], metavar="S",
                    help="run every configuration once per seed: 0 as is (the default), S > 0 with the input "
                         "embeddings perturbed by 1e-6 relative; the spread is the arithmetic noise of a result")
    ap.add_argument("--f32", action="store_true", help="plain float32 arithmetic (no Q8/F16 emulation)")
    ap.add_argument("-o", "--output", help="JSON file for the results; the per-token NLLs go to the same name "
                                          "with .nll.json.gz, the table with .md")
    ap.add_argument("--append", action="store_true",
                    help="add the runs to those already in --output (the first dense run is the reference)")
    args = ap.parse_args(argv)
    if args.append and not args.output:
        ap.error("--append needs --output")

    if args.model is None:
        from adamas_gguf.models import default_model_path
        args.model = str(default_model_path())

    with open(args.text, encoding="utf-8") as f:
        text = f.read()
    tokens = tokenize(args.model, text)[:args.max_tokens]
    T = len(tokens)
    if T < 2:
        raise SystemExit(f"{args.text}: {T} token(s); perplexity needs at least 2")
    t_start = time.monotonic()
    model = Model(args.model, emulate=not args.f32)
    print(f"{os.path.basename(args.model)}: {model.n_layer} layers, {model.n_head}/{model.n_head_kv} heads, "
          f"D={model.head_dim}, rope base {model.rope_base}; {T} tokens", file=sys.stderr)

    command = "python scripts/oracle_ppl.py " + " ".join(sys.argv[1:] if argv is None else argv)
    meta = dict(commands=[command], model=os.path.basename(args.model), text=os.path.basename(args.text),
                n_tokens=T, emulate_llama_cpp=not args.f32, thr_q=args.thr_q, thr_k=args.thr_k)
    runs = []
    if args.append and os.path.exists(args.output):
        with open(args.output) as f:
            old = json.load(f)
        om = old["meta"]
        if (om["model"], om["text"], om["n_tokens"], om["emulate_llama_cpp"]) != \
                (meta["model"], meta["text"], meta["n_tokens"], meta["emulate_llama_cpp"]):
            raise SystemExit(f"{args.output}: other model, text, length or arithmetic; not appending")
        meta["commands"] = om["commands"] + meta["commands"]
        runs = old["runs"]

    def n_recent_of(b):
        return int(args.recent) if args.recent >= 1 else int(args.recent * b)

    def run(policy, budget=0, n_dense=0, select=None, n_recent=0, jitter=0, cache=None):
        t0 = time.monotonic()
        nll = forward_nll(model, tokens, policy, budget, n_dense, args.thr_q, args.thr_k, select or "head",
                          args.sink if policy != "dense" else 0, n_recent, cache=cache, jitter=jitter)
        secs = time.monotonic() - t0
        ppl = math.exp(float(nll.mean()))
        sparse = policy != "dense"
        runs.append(dict(policy=policy, budget=budget, n_dense=n_dense if sparse else None,
                         select=select if sparse else None, n_sink=args.sink if sparse else 0,
                         n_recent=n_recent, jitter=jitter, ppl=ppl, seconds=round(secs, 1),
                         nll=[round(float(v), 4) for v in nll]))
        extra = f" sink {args.sink} recent {n_recent}" if sparse and (args.sink or n_recent) else ""
        extra += f" jitter {jitter}" if jitter else ""
        print(f"{policy:7s} budget {budget:4d} n_dense {n_dense} {select or '':5s}{extra}: ppl {ppl:.4f}  "
              f"({secs:.0f} s)", file=sys.stderr, flush=True)

    for seed in args.seeds:
        if "dense" in args.policy:
            run("dense", jitter=seed)
    for nd in args.n_dense:
        cache = {}  # the dense prefix (layers < nd) is the same for every unperturbed sparse run
        for sel in args.select:
            for b in args.budget:
                nr = n_recent_of(b)
                if args.sink + nr >= b:
                    raise SystemExit(f"budget {b}: sink + recent ({args.sink} + {nr}) leave nothing to select")
                for seed in args.seeds:
                    for pol in args.policy:
                        if pol != "dense":
                            run(pol, b, nd, sel, nr, jitter=seed, cache=cache)

    meta["dense_ppl"] = next((r["ppl"] for r in runs if r["policy"] == "dense" and not r.get("jitter")), None)
    report = markdown(meta, runs)
    print("\n" + report, end="")
    print(f"\n{T} tokens, {time.monotonic() - t_start:.0f} s", file=sys.stderr)
    if args.output:
        # the summary in the JSON; the per-token NLLs (thousands a run) apart, compressed, next to it
        # (runs appended from an earlier file keep theirs only where that file's .nll.json.gz is here)
        nll_path = os.path.splitext(args.output)[0] + ".nll.json.gz"
        old_nll = []
        if args.append and os.path.exists(nll_path):
            with gzip.open(nll_path, "rt") as f:
                old_nll = json.load(f)["nll"]
        nll = [r.pop("nll") if "nll" in r else (old_nll[i] if i < len(old_nll) else None)
               for i, r in enumerate(runs)]
        with open(args.output, "w") as f:
            json.dump(dict(meta=meta, runs=runs), f, indent=1)
        with gzip.open(nll_path, "wt") as f:
            json.dump(dict(nll=nll), f, separators=(",", ":"))
        with open(os.path.splitext(args.output)[0] + ".md", "w") as f:
            f.write(report)


def markdown(meta, runs) -> str:
    """The results as a markdown table ("vs dense": against the unperturbed dense run)."""
    dense = meta["dense_ppl"]
    arith = "llama.cpp's CPU arithmetic emulated" if meta["emulate_llama_cpp"] else "plain float32"
    lines = [f"Perplexity under sparse attention policies (scripts/oracle_ppl.py), {meta['model']}, {meta['text']}: "
             f"{meta['n_tokens']} tokens, every prediction a decode step; {arith}.", "",
             "| policy | select | budget | dense layers | sink + recent | ppl | vs dense |",
             "|:---|:---|---:|---:|---:|---:|---:|"]
    for r in runs:
        rel = f"{100 * (r['ppl'] / dense - 1):+.2f}%" if dense and (r["policy"] != "dense" or r.get("jitter")) else ""
        sr = f"{r['n_sink']} + {r['n_recent']}" if r["n_sink"] or r["n_recent"] else ""
        name = r["policy"] + (f" (jitter {r['jitter']})" if r.get("jitter") else "")
        nd = "all" if r["n_dense"] is None else r["n_dense"]
        lines.append(f"| {name} | {r['select'] or ''} | {r['budget'] or 'dense'} | {nd} | {sr} | {r['ppl']:.4f} | {rel} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
