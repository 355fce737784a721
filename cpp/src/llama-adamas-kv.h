// adamas_gguf: key codes beside llama.cpp's K cache, and the Adamas decode step of build_attn.
// The hooks into llama-kv-cache.{h,cpp}, llama-graph.{h,cpp} are in cpp/patches; the code is here.
#pragma once

#include "llama-adamas.h"

#include "ggml.h"

#include <cstdint>
#include <string>
#include <vector>

struct llama_hparams;
struct llama_cparams;
struct llama_ubatch;
struct llm_graph_context;
class  llm_graph_input_i;
class  llama_kv_cache;
class  llama_kv_cache_context;
class  llama_batch_allocr;
struct llama_context;

// Adamas state of one llama_kv_cache (a member of it).
struct llama_adamas_kv_state {
    // per stream: K holds cells whose codes were not written (a step within the budget writes none) or
    // were invalidated; they are rebuilt from K when a step first needs them
    std::vector<bool> stale;
    int64_t     n_sparse_steps  = 0;    // ubatches decoded with sparse attention
    std::string reason;                 // why the model decodes dense (attention bias, sinks, ...; empty: none found
                                        // yet); a layer's device refusing is the layer's, not the model's
    bool        warned          = false; // the first dense layer was logged (once per context)
    int32_t     budget          = 0;    // the context's budget (llama_adamas_set), for splitting batches

    bool is_stale(uint32_t s) const { return s < stale.size() && stale[s]; }
    void set_stale(uint32_t s, bool v) {
        if (s >= stale.size()) {
            stale.resize(s + 1, false);
        }
        stale[s] = v;
    }
};

struct llama_adamas_kv {
    class input; // the graph input of a decode step (llama-adamas-kv.cpp)

    // ---- llama_kv_cache hooks ----
    // The code tensor of layer il (I8 [n_head_kv*D/4, kv_size, n_stream]) in K's context, or NULL where
    // Adamas cannot code this layer's keys.
    static ggml_tensor * new_codes(ggml_context * ctx, const llama_hparams & hp, uint32_t il, uint32_t kv_size, uint32_t n_stream);

    static void log_size(const llama_kv_cache & kv);
    static void copy_stream(const llama_kv_cache & kv, uint32_t ssrc, uint32_t sdst);

    // K changed under the codes of stream strm (-1: all streams; context shift, state load): they are stale
    static void invalidate(const llama_kv_cache & kv, int32_t strm = -1);
    // true if update() has codes to rebuild: a stale stream that holds more cells than the budget (one
    // within it decodes dense, and would otherwise be re-encoded before every step)
    static bool update_stream(const llama_kv_cache & kv, uint32_t s, int32_t budget); // stream s needs it
    static bool update_pending(const llama_kv_cache & kv, const llama_context * lctx);
    // re-encodes those streams' codes from K; true if it computed something
    static bool update(llama_kv_cache & kv, llama_context * lctx);

    // llama_kv_cache(_iswa)::init_batch, after split_reset: a batch where some sequences decode one token past
    // the budget while others take several (llama-server's prompt chunks beside its decoding slots) gets those
    // decode tokens in ubatches of their own, which are sparse; the prompt tokens stay dense and exact. Adds
    // the ubatches it made to `ubatches`: with sequential (one cache stream per sequence) only the decode
    // ubatches, runs of consecutive sequence ids, and the caller's split_equal takes the rest; else all of them.
    static void set_budget(const llama_context * lctx, int32_t budget); // what split_decode goes by
    static void split_decode(const llama_kv_cache & kv, llama_batch_allocr & balloc, uint32_t n_ubatch, bool sequential,
                             std::vector<llama_ubatch> & ubatches);

    static const llama_adamas_kv_state * state(const llama_context * lctx);
    static const char * unavailable_reason(const llama_context * lctx);
    static int32_t      n_sparse_layers(const llama_context * lctx);
    static const char * layer_reason(const llama_context * lctx, int32_t il); // NULL: layer il is sparse
    static int64_t      verify(llama_context * lctx);

    // ---- llm_graph_context::build_attn hooks (KV cache, and the non-SWA layers of an iSWA cache) ----
    // Writes this ubatch's key codes (k_cur NULL: the layer reuses another layer's cache) and, for a decode
    // step of a sparse layer, builds the Adamas attention (NULL: the caller builds dense attention). While
    // every stream of the ubatch fits the budget it adds nothing (upstream's graph); the first step that
    // needs a stale stream's codes rebuilds them from K.
    //   mctx, k_idxs, k_rot, kq_mask: the layer's cache context and graph inputs; slot: where the graph
    //   keeps its one Adamas input (a member of the attention input)
    static ggml_tensor * build_attn(
            const llm_graph_context & g,
            const llama_kv_cache_context * mctx,
            ggml_tensor * k_idxs,
            ggml_tensor * k_rot,
            llm_graph_input_i ** slot,
            ggml_tensor * q_cur,
            ggml_tensor * k_cur,
            ggml_tensor * k,
            ggml_tensor * v,
            ggml_tensor * kq_b,
            ggml_tensor * kq_mask,
            ggml_tensor * sinks,
            float         kq_scale,
            int           il);

    // graph nodes Adamas may add to a graph of this context beyond upstream's (llama_context::graph_max_nodes)
    static uint32_t graph_nodes(const llama_context * lctx);

    // the plain KV cache of a context: its own, or the non-SWA part of an iSWA cache (NULL: neither)
    static const llama_kv_cache * kv_of(const llama_context * lctx);
};
