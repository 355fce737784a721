#pragma once

// Adamas sparse attention ops (arXiv 2510.18413) for ggml.
//
// A decode step ranks every cached token by the L1 distance between 2-bit codes of the
// Hadamard-transformed query and key, keeps the `budget` nearest and attends over those only:
//
//   kc  = ggml_adamas_encode_set_rows(ctx, codes, k_cur, k_idxs, ...)   // when K enters the cache
//   qc  = ggml_adamas_encode(ctx, q_cur, ...)
//   idx = ggml_adamas_select(ctx, qc, kc_view, kq_mask, budget, mode)
//   out = ggml_adamas_attn(ctx, q, k, v, kq_mask, idx, scale, softcap)
//   (or a pool: select with R*budget, then ggml_adamas_attn_rerank(..., n_keep = budget, n_lead))
//
// Code layout (GGML_TYPE_I8, D/4 bytes per head of dimension D):
//   bytes [0,   D/8): sign plane      s[d] = y[d] > 0
//   bytes [D/8, D/4): magnitude plane m[d] = y[d] <= -t || y[d] > t
//   dimension d is bit d%8 of byte d/8 of its plane (LSB first), so a plane read as
//   little-endian 64-bit words (32-bit when D = 32) holds dimensions in order.
// The 2-bit code of a coordinate y with threshold t > 0 is the paper's bucket
//   y <= -t -> 0,  y <= 0 -> 1,  y <= t -> 2,  else 3      (s = code >= 2, m = code is 0 or 3)
// and the exact L1 distance between two code vectors is two popcounts:
//   S = s_q ^ s_k;  L1 = popc(S ^ m_q ^ m_k) + 2*popc(S & (m_q | m_k))
// (same sign: |dq - dk| = m_q ^ m_k; opposite signs: 1 + m_q + m_k, whose low bit is 1 ^ m_q ^ m_k and high
// bit m_q | m_k).
//
// A change to an op's parameters (op_params), sources or meaning must bump GGML_RPC_ADAMAS_WIRE_VERSION
// (src/ggml-rpc/ggml-rpc-adamas.h): RPC servers run the graphs clients send them, and refuse the ops only
// when the versions differ.

#include "ggml.h"

#ifdef __cplusplus
extern "C" {
#endif

// head dimensions the ops accept: powers of two in [32, 256]
#define GGML_ADAMAS_D_MIN 32
#define GGML_ADAMAS_D_MAX 256

enum ggml_adamas_thr_mode {
    GGML_ADAMAS_THR_FIXED = 0, // t = thr (the paper: 10)
    GGML_ADAMAS_THR_RMS   = 1, // t = thr * RMS of the transformed vector, per vector (so a stored code never
                               // depends on other tokens and never needs recomputing)
};

enum ggml_adamas_select_mode {
    GGML_ADAMAS_SELECT_HEAD  = 0, // one selection per query head, against its KV head
    GGML_ADAMAS_SELECT_GROUP = 1, // one selection per KV head, ranked by the sum of the distances of the
                                  // query heads that share it (one index list serves the group)
};

// bytes of code per head of dimension d
#define GGML_ADAMAS_CODE_SIZE(d) ((d)/4)

// true if d is a head dimension the ops accept
GGML_API bool ggml_adamas_supported_dim(int64_t d);

// Encode rows of a head dimension.
//   a:      F32 or F16 [D, n_head, n_rows, ne3], rows contiguous in dim 0
//   result: I8 [D/4, n_head, n_rows, ne3]
//   thr:    > 0; t itself (FIXED) or the factor c of t = c*RMS (RMS)
//   skip_wht: bucketize a as it is (for a q/k that is already Hadamard-rotated, e.g. llama.cpp's
//             attn_rot_k with nrot == D); otherwise y = H a / sqrt(D), H the Sylvester Hadamard matrix
GGML_API struct ggml_tensor * ggml_adamas_encode(
        struct ggml_context * ctx,
        struct ggml_tensor  * a,
        enum ggml_adamas_thr_mode mode,
        float                 thr,
        bool                  skip_wht);

// Encode and scatter into a code cache, as ggml_set_rows does for K: the codes of a's row i (all its
// heads) are written to row idxs[i] of `codes`. Returns a view of `codes` (use it, not `codes`, as the
// source of later reads, so that the graph orders them after the write).
//   codes: I8 [n_head*D/4, n_cells, ...] with contiguous rows
//   a:     F32 or F16 [D, n_head, n_rows]
//   idxs:  I64 or I32 [n_rows], each in [0, ggml_nrows(codes)); NULL: row i goes to row i (re-encoding a
//          whole cache, e.g. after a context shift)
GGML_API struct ggml_tensor * ggml_adamas_encode_set_rows(
        struct ggml_context * ctx,
        struct ggml_tensor  * codes,
        struct ggml_tensor  * a,
        struct ggml_tensor  * idxs,
        enum ggml_adamas_thr_mode mode,
        float                 thr,
        bool                  skip_wht);

// Encode a's values as an F16 cache stores them (each rounded to F16 first), without a cast node: the
// codes then equal those re-encoded later from the F16 cache (after a context shift or a state load).
GGML_API void ggml_adamas_encode_set_round_f16(struct ggml_tensor * encode, bool round_f16);

// Select the `budget` cached cells nearest to each query.
//   qc:   I8 [D/4, n_head,    n_q,  ns]   query codes
//   kc:   I8 [D/4, n_head_kv, n_kv, ns]   key codes (may be a strided view of a code cache)
//   mask: F16 or F32 [n_kv, >= n_q, 1, ns] or NULL; a cell whose mask value is -INF is never chosen
//         (the KQ mask of ggml_flash_attn_ext); +INF marks a cell that is always chosen, ahead of every
//         ranked cell (sink and recent tokens); any other value means visible and ranked
//   result: I32 [budget, n_head (HEAD) or n_head_kv (GROUP), n_q, ns]: cell indices in [0, n_kv)
//   n_head % n_head_kv == 0; query head h reads KV head h / (n_head/n_head_kv). Distances are 16-bit in
//   the kernels: GROUP mode needs 3*D*(n_head/n_head_kv) + 1 < 65535 (e.g. up to 85 query heads per KV
//   head at D = 256), which the constructor asserts.
// Order and ties (one rule): cells are ranked by smaller distance first, then by higher cell index
// (on llama.cpp's cache usually the more recent token), with +INF cells ahead of all (by higher index);
// the result lists the first `budget` cells of that ranking in ranking order. If fewer than `budget`
// cells are visible, the remaining slots are -1.
GGML_API struct ggml_tensor * ggml_adamas_select(
        struct ggml_context * ctx,
        struct ggml_tensor  * qc,
        struct ggml_tensor  * kc,
        struct ggml_tensor  * mask,
        int                   budget,
        enum ggml_adamas_select_mode mode);

// The same ranking over a candidate list per query: only the cells a query's row of `cells` names are ranked
// (a unified KV cache holding several sequences: each query lists its own sequence's cells, so the work and the
// scratch are n_cand, not n_kv, per row).
//   cells: I32 [n_cand, n_q, ns], rows contiguous: cell indices in [0, n_kv) in strictly increasing order,
//          and -1 entries anywhere (padding), which are skipped. kc and the mask are read at the listed cells.
//   result: as ggml_adamas_select: cell indices in [0, n_kv) (not list positions), the same tie rule, -1 slots
//          where fewer than `budget` listed cells are visible. When each row lists every visible cell of its
//          query (any superset of them), the result equals ggml_adamas_select's.
// The CPU backend aborts on a cell out of range or out of order; the CUDA kernel trusts the list.
GGML_API struct ggml_tensor * ggml_adamas_select_cells(
        struct ggml_context * ctx,
        struct ggml_tensor  * qc,
        struct ggml_tensor  * kc,
        struct ggml_tensor  * mask,
        struct ggml_tensor  * cells,
        int                   budget,
        enum ggml_adamas_select_mode mode);

// Exact softmax attention over the selected cells only, reading their K and V rows in place.
//   q:    F32 [D,  n_q,  n_head,    ns]   (the layout of ggml_flash_attn_ext)
//   k:    [D,  n_kv, n_head_kv, ns]       F32, F16, BF16 or a quantized type (q8_0, q4_0, ...)
//   v:    [Dv, n_kv, n_head_kv, ns]       same choices, not transposed
//   mask: F16 or F32 [n_kv, >= n_q, 1, ns] or NULL; added to the logits of the selected cells
//   idx:  I32 [budget, n_head or n_head_kv, n_q, ns] (ggml_adamas_select); -1 slots are skipped
//   result: F32 [Dv, n_head, n_q, ns] (permuted like ggml_flash_attn_ext's result)
//   logit = softcap*tanh(q.k*scale/softcap) + mask  (softcap 0: q.k*scale + mask); a row with no
//   visible selected cell gives 0.
GGML_API struct ggml_tensor * ggml_adamas_attn(
        struct ggml_context * ctx,
        struct ggml_tensor  * q,
        struct ggml_tensor  * k,
        struct ggml_tensor  * v,
        struct ggml_tensor  * mask,
        struct ggml_tensor  * idx,
        float                 scale,
        float                 softcap);

// The same over n_keep of the selected cells (1 <= n_keep <= idx->ne[0]): idx is a candidate pool
// (ggml_adamas_select with a larger budget) and the exact logits pick the budget from it. The first n_lead
// slots (0 <= n_lead <= n_keep; the select's forced cells, which it ranks first: sinks, recent tokens) are
// always kept; of the other slots the n_keep - n_lead with the highest logits are. Among equal logits the
// earlier slot is kept (the select's better rank). K is read for every candidate, V only for the kept ones.
GGML_API struct ggml_tensor * ggml_adamas_attn_rerank(
        struct ggml_context * ctx,
        struct ggml_tensor  * q,
        struct ggml_tensor  * k,
        struct ggml_tensor  * v,
        struct ggml_tensor  * mask,
        struct ggml_tensor  * idx,
        float                 scale,
        float                 softcap,
        int                   n_keep,
        int                   n_lead);

#ifdef __cplusplus
}
#endif
