// adamas_gguf: Adamas sparse attention for llama.cpp. Plain C API, exported by libllama.
//
// A context decodes with Adamas once llama_adamas_set() gives it a budget > 0: at each decode step (one
// token per sequence), every full-attention layer past the first `n_dense` ranks the cached tokens by the L1
// distance between 2-bit codes of the Hadamard-transformed query and keys (ggml-adamas.h) and attends over
// the `budget` nearest only. Prefill, and any step whose visible context fits in the budget, stay dense and exact.
// llama_context_params is left as upstream has it (llama-cpp-python mirrors its layout).
#pragma once

#include "llama.h"

#ifdef __cplusplus
extern "C" {
#endif

// Version of adamas_gguf this library was built from, e.g. "0.1.0".
LLAMA_API const char * llama_adamas_version(void);

// The upstream it was built from, e.g. "llama-cpp-python 0.3.36 (llama.cpp 0c1e57098)".
LLAMA_API const char * llama_adamas_upstream(void);

enum llama_adamas_thr_mode {
    LLAMA_ADAMAS_THR_FIXED = 0, // bucket thresholds at +-thr (the paper: 10)
    LLAMA_ADAMAS_THR_RMS   = 1, // bucket thresholds at +-thr * RMS of each transformed vector
};

enum llama_adamas_select_mode {
    LLAMA_ADAMAS_SELECT_HEAD  = 0, // one selection per query head
    LLAMA_ADAMAS_SELECT_GROUP = 1, // one selection per KV head, by the sum of its query heads' distances
    LLAMA_ADAMAS_SELECT_EXACT = 2, // reference: each query head attends its true top budget by exact q.k over
                                   // every visible cell (equal logits: the better code rank); K is read whole
                                   // each step, so it is no faster than dense; rerank is not used; CPU (a
                                   // device that cannot run it turns Adamas off, with the reason)
};

struct llama_adamas_params {
    int32_t budget;       // tokens attended per head in a sparse step; 0 = dense (Adamas off)
    int32_t n_dense;      // the first n_dense layers stay dense (default 2); layers of a sliding window do
                          // not count (an iSWA model's first n_dense full-attention layers stay dense)
    int32_t thr_mode;     // enum llama_adamas_thr_mode
    float   thr_q;        // threshold (FIXED) or RMS factor (RMS) for queries, > 0
    float   thr_k;        // the same for keys, > 0
    int32_t select_mode;  // enum llama_adamas_select_mode (EXACT: the reference selection)
    int32_t n_sink;       // the first n_sink tokens of the sequence are always kept (inside the budget)
    int32_t n_recent;     // the n_recent most recent tokens are always kept (inside the budget);
                          // LLAMA_ADAMAS_RECENT_AUTO (-1, the default): min(16, budget/4), less what the sinks take
    int32_t rerank;       // 1: the budget nearest by code distance; R > 1: the R*budget nearest are a pool
                          // and their exact q.k logits keep the budget best (K read for the pool, V for the
                          // budget; sink and recent tokens are kept first, inside the budget)
};

#define LLAMA_ADAMAS_RECENT_AUTO (-1)

// Defaults: budget 0 (off), n_dense 2, RMS thresholds 0.5 (q) and 1.0 (k), per-query-head selection, no sinks,
// recent tokens AUTO (16 at budget >= 64), rerank 4 (chosen by measurement: docs/accuracy.md §7 and §9).
LLAMA_API struct llama_adamas_params llama_adamas_default_params(void);

// The recent tokens a step with p keeps: p->n_recent, or for LLAMA_ADAMAS_RECENT_AUTO min(16, budget/4,
// budget - n_sink) (0 when dense).
LLAMA_API int32_t llama_adamas_n_recent(const struct llama_adamas_params * p);

// Checks p; returns NULL if valid, else a message saying what is wrong (static storage).
LLAMA_API const char * llama_adamas_params_check(const struct llama_adamas_params * p);

// Sets the Adamas parameters of a context; they apply from its next decode. Returns 0, or -1 if p is
// invalid (nothing changes; llama_adamas_params_check says why).
LLAMA_API int32_t llama_adamas_set(struct llama_context * ctx, const struct llama_adamas_params * p);

LLAMA_API struct llama_adamas_params llama_adamas_get(const struct llama_context * ctx);

// Number of layers of the context's model that run sparse decode steps with the current parameters
// (0 when the budget is 0 or Adamas cannot serve this model on its devices).
LLAMA_API int32_t llama_adamas_n_sparse_layers(const struct llama_context * ctx);

// Number of ubatches this context has decoded with sparse attention (for tests and reports).
LLAMA_API int64_t llama_adamas_n_sparse_steps(const struct llama_context * ctx);

// For tests: re-encodes the keys of every used cell from the K cache on the CPU and compares them with
// the stored codes. Returns the number of (layer, cell) code rows that differ, or -1 on error. A stream
// that holds at most the budget has no codes (its steps are dense) and is skipped; one past it must have
// them all, from the step that took it past the budget on.
LLAMA_API int64_t llama_adamas_verify_codes(struct llama_context * ctx);

// Why Adamas cannot serve this context, or NULL if it can (e.g. "head_dim 80 is not a power of two"). NULL too
// when it serves some layers only: with layers split over devices, those whose device lacks the Adamas ops (an
// RPC server without the same Adamas) decode dense; llama_adamas_layer_reason says which.
LLAMA_API const char * llama_adamas_unavailable_reason(const struct llama_context * ctx);

// Why layer il decodes dense with the current parameters, or NULL if it runs sparse decode steps: e.g. one of
// the first n_dense layers, a sliding-window layer (by design: it attends to its window only), or the reason
// Adamas cannot serve the model. Static storage, valid until the next call on this thread.
LLAMA_API const char * llama_adamas_layer_reason(const struct llama_context * ctx, int32_t il);

#ifdef __cplusplus
}
#endif
