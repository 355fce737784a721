// adamas_gguf additions to libllama: the public C API (llama-adamas.h). Compiled into llama (see
// cpp/patches/0001); the graph and cache side is in llama-adamas-kv.cpp.
#include "llama-adamas.h"

#include "llama-adamas-kv.h"
#include "llama-context.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>

// Both are set per source file by our top-level CMakeLists.txt, so a version bump rebuilds one file.
#ifndef ADAMAS_GGUF_VERSION
#error "ADAMAS_GGUF_VERSION must be defined by the build"
#endif
#ifndef ADAMAS_GGUF_UPSTREAM
#error "ADAMAS_GGUF_UPSTREAM must be defined by the build"
#endif

const char * llama_adamas_version(void) {
    return ADAMAS_GGUF_VERSION;
}

const char * llama_adamas_upstream(void) {
    return ADAMAS_GGUF_UPSTREAM;
}

struct llama_adamas_params llama_adamas_default_params(void) {
    llama_adamas_params p;
    p.budget      = 0;
    p.n_dense     = 2;
    // chosen by measurement on SmolLM2, 1K-7.6K tokens (docs/accuracy.md): thresholds relative to each
    // vector's RMS (0.5 for queries, 1.0 for keys) carry over between models, unlike fixed ones, and gave
    // the best perplexity at budget 64 (+15% vs +23% for fixed +-1); one selection per query head found the
    // pass key 16/20 at budget 64 where one per KV group found 7/20, for ~8% of the sparse step's speed
    p.thr_mode    = LLAMA_ADAMAS_THR_RMS;
    p.thr_q       = 0.5f;
    p.thr_k       = 1.0f;
    p.select_mode = LLAMA_ADAMAS_SELECT_HEAD;
    p.n_sink      = 0;
    // the 16 newest tokens, taken inside the budget (a quarter of it at most): as fast (GPU -0.4-0.7%, CPU 0)
    // and at least as accurate on SmolLM2 (passkey 19/20 vs 18/20 at 64), far better on Gemma 3 (accuracy §9)
    p.n_recent    = LLAMA_ADAMAS_RECENT_AUTO;
    // a pool of 4 x budget by codes, the budget best of it by exact q.k (docs/accuracy.md §7): perplexity at
    // budget 256 from +2.0% to +0.4% over 2048 tokens, within 10% of the fastest pool's decode speed
    p.rerank      = 4;
    return p;
}

const char * llama_adamas_params_check(const struct llama_adamas_params * p) {
    if (!p) {
        return "no parameters given";
    }
    if (p->budget < 0) {
        return "budget must be >= 0 (0 = dense)";
    }
    if (p->n_dense < 0) {
        return "n_dense must be >= 0";
    }
    if (p->thr_mode != LLAMA_ADAMAS_THR_FIXED && p->thr_mode != LLAMA_ADAMAS_THR_RMS) {
        return "thr_mode must be LLAMA_ADAMAS_THR_FIXED (0) or LLAMA_ADAMAS_THR_RMS (1)";
    }
    if (!std::isfinite(p->thr_q) || p->thr_q <= 0.0f || !std::isfinite(p->thr_k) || p->thr_k <= 0.0f) {
        return "thresholds thr_q and thr_k must be finite and > 0";
    }
    if (p->select_mode != LLAMA_ADAMAS_SELECT_HEAD && p->select_mode != LLAMA_ADAMAS_SELECT_GROUP &&
        p->select_mode != LLAMA_ADAMAS_SELECT_EXACT) {
        return "select_mode must be LLAMA_ADAMAS_SELECT_HEAD (0), LLAMA_ADAMAS_SELECT_GROUP (1) or LLAMA_ADAMAS_SELECT_EXACT (2)";
    }
    if (p->n_sink < 0 || (p->n_recent < 0 && p->n_recent != LLAMA_ADAMAS_RECENT_AUTO)) {
        return "n_sink must be >= 0, n_recent >= 0 or LLAMA_ADAMAS_RECENT_AUTO (-1)";
    }
    if (p->rerank < 1 || (int64_t) p->rerank*p->budget > INT32_MAX) {
        return "rerank must be >= 1 (1: off), and rerank * budget must fit in 32 bits";
    }
    if (p->budget > 0 && (int64_t) p->n_sink + std::max(p->n_recent, 0) > p->budget) {
        return "n_sink + n_recent must not exceed the budget (they are kept inside it)";
    }
    return nullptr;
}

int32_t llama_adamas_n_recent(const struct llama_adamas_params * p) {
    if (!p || p->budget <= 0) {
        return 0;
    }
    if (p->n_recent != LLAMA_ADAMAS_RECENT_AUTO) {
        return p->n_recent;
    }
    return std::max(0, std::min({16, p->budget/4, p->budget - p->n_sink}));
}

int32_t llama_adamas_set(struct llama_context * ctx, const struct llama_adamas_params * p) {
    if (!ctx || llama_adamas_params_check(p) != nullptr) {
        return -1;
    }
    ctx->adamas_set(*p);
    return 0;
}

struct llama_adamas_params llama_adamas_get(const struct llama_context * ctx) {
    return ctx->get_cparams().adamas;
}

int32_t llama_adamas_n_sparse_layers(const struct llama_context * ctx) {
    return llama_adamas_kv::n_sparse_layers(ctx);
}

int64_t llama_adamas_n_sparse_steps(const struct llama_context * ctx) {
    const llama_adamas_kv_state * st = llama_adamas_kv::state(ctx);
    return st ? st->n_sparse_steps : 0;
}

int64_t llama_adamas_verify_codes(struct llama_context * ctx) {
    return llama_adamas_kv::verify(ctx);
}

const char * llama_adamas_unavailable_reason(const struct llama_context * ctx) {
    return llama_adamas_kv::unavailable_reason(ctx);
}

const char * llama_adamas_layer_reason(const struct llama_context * ctx, int32_t il) {
    return llama_adamas_kv::layer_reason(ctx, il);
}

void llama_context::adamas_set(const llama_adamas_params & p) {
    const bool changed = memcmp(&cparams.adamas, &p, sizeof(p)) != 0;
    // stored key codes depend on the key thresholds: new ones make them stale (re-encoded at the next update)
    const bool recode = p.thr_mode != cparams.adamas.thr_mode || p.thr_k != cparams.adamas.thr_k;
    cparams.adamas = p;
    llama_adamas_kv::set_budget(this, p.budget);
    if (recode) {
        if (const llama_kv_cache * kv = llama_adamas_kv::kv_of(this)) {
            llama_adamas_kv::invalidate(*kv);
        }
    }
    if (changed) {
        // the budget and the dense layers change the decode graph's shape
        sched_need_reserve = true;
    }
}
