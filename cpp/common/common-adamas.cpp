// adamas_gguf: the --adamas-* flags of upstream's common library (see common-adamas.h).
#include "common-adamas.h"

#include "arg.h"
#include "common.h"
#include "log.h"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <stdexcept>

namespace {

struct flag_info {
    const char * name;
    const char * env;
};

const flag_info FLAGS[COMMON_ADAMAS_N_FLAGS] = {
    {"--adamas-budget",       "LLAMA_ARG_ADAMAS_BUDGET"},
    {"--adamas-dense-layers", "LLAMA_ARG_ADAMAS_DENSE_LAYERS"},
    {"--adamas-thr-mode",     "LLAMA_ARG_ADAMAS_THR_MODE"},
    {"--adamas-thr-q",        "LLAMA_ARG_ADAMAS_THR_Q"},
    {"--adamas-thr-k",        "LLAMA_ARG_ADAMAS_THR_K"},
    {"--adamas-select",       "LLAMA_ARG_ADAMAS_SELECT"},
    {"--adamas-sink",         "LLAMA_ARG_ADAMAS_SINK"},
    {"--adamas-recent",       "LLAMA_ARG_ADAMAS_RECENT"},
    {"--adamas-rerank",       "LLAMA_ARG_ADAMAS_RERANK"},
};

// one handler per flag (arg.cpp takes plain function pointers): keep the value, parse it once all are read
template <int F>
void keep(common_params & params, const std::string & value) {
    params.adamas.raw[F]   = value;
    params.adamas.given[F] = true;
}

[[noreturn]] void bad(int f, const std::string & value, const std::string & why) {
    throw std::invalid_argument(string_format("error: %s '%s': %s", FLAGS[f].name, value.c_str(), why.c_str()));
}

int32_t parse_int(const common_adamas & a, int f, int32_t lo) {
    const std::string & s = a.raw[f];
    errno = 0;
    char * end = nullptr;
    const long long v = std::strtoll(s.c_str(), &end, 10);
    if (s.empty() || *end != '\0' || errno == ERANGE) {
        bad(f, s, "not an integer");
    }
    if (v < lo || v > INT32_MAX) {
        bad(f, s, string_format("must be from %d to %d", lo, INT32_MAX));
    }
    return (int32_t) v;
}

float parse_thr(const common_adamas & a, int f) {
    const std::string & s = a.raw[f];
    errno = 0;
    char * end = nullptr;
    const double v = std::strtod(s.c_str(), &end);
    if (s.empty() || *end != '\0') {
        bad(f, s, "not a number");
    }
    // the library keeps a C float: it must stay finite and > 0 as one
    const float x = (float) v;
    if (!std::isfinite(v) || !std::isfinite(x) || !(x > 0.0f)) {
        bad(f, s, "must be a finite number > 0 (as a C float)");
    }
    return x;
}

}  // namespace

std::vector<common_arg> common_adamas_args() {
    const llama_adamas_params d = llama_adamas_default_params();
    auto opt = [](int f, const char * hint, const std::string & help,
                  void (*handler)(common_params &, const std::string &)) {
        common_arg a({FLAGS[f].name}, hint, "adamas_gguf: " + help, handler);
        a.set_env(FLAGS[f].env);
        // only the programs whose contexts come from common_init_from_params apply them
        a.set_examples({LLAMA_EXAMPLE_SERVER, LLAMA_EXAMPLE_CLI, LLAMA_EXAMPLE_COMPLETION, LLAMA_EXAMPLE_PERPLEXITY});
        return a;
    };
    return {
        opt(COMMON_ADAMAS_BUDGET, "N", string_format(
            "Adamas sparse attention: tokens attended per head in a decode step (0 = dense, Adamas off; "
            "needs flash attention; prefill and contexts within the budget stay dense) (default: %d)", d.budget),
            keep<COMMON_ADAMAS_BUDGET>),
        opt(COMMON_ADAMAS_DENSE_LAYERS, "N", string_format("the first N full-attention layers stay dense; sliding-window layers do not count (default: %d)", d.n_dense),
            keep<COMMON_ADAMAS_DENSE_LAYERS>),
        opt(COMMON_ADAMAS_THR_MODE, "{rms,fixed}", string_format(
            "bucket thresholds of the 2-bit codes: rms = --adamas-thr-q/-k times each transformed vector's RMS, "
            "fixed = the values themselves (default: %s)", d.thr_mode == LLAMA_ADAMAS_THR_RMS ? "rms" : "fixed"),
            keep<COMMON_ADAMAS_THR_MODE>),
        opt(COMMON_ADAMAS_THR_Q, "X", string_format("threshold (or RMS factor) for queries, > 0 (default: %g)", d.thr_q),
            keep<COMMON_ADAMAS_THR_Q>),
        opt(COMMON_ADAMAS_THR_K, "X", string_format("threshold (or RMS factor) for keys, > 0 (default: %g)", d.thr_k),
            keep<COMMON_ADAMAS_THR_K>),
        opt(COMMON_ADAMAS_SELECT, "{head,group,exact}", string_format(
            "head = one token selection per query head, group = one per KV head, exact = the reference (each "
            "head's true top budget by exact q.k; reads all of K) (default: %s)",
            d.select_mode == LLAMA_ADAMAS_SELECT_HEAD ? "head" : d.select_mode == LLAMA_ADAMAS_SELECT_GROUP ? "group" : "exact"),
            keep<COMMON_ADAMAS_SELECT>),
        opt(COMMON_ADAMAS_SINK, "N", string_format("always attend the first N tokens, inside the budget (default: %d)", d.n_sink),
            keep<COMMON_ADAMAS_SINK>),
        opt(COMMON_ADAMAS_RECENT, "N|auto", "always attend the N most recent tokens, inside the budget; auto = min(16, "
            "budget/4) (default: auto)",
            keep<COMMON_ADAMAS_RECENT>),
        opt(COMMON_ADAMAS_RERANK, "R", string_format(
            "R > 1: the R*budget nearest tokens by code distance are a pool, the budget of them with the highest "
            "exact q.k are attended; 1 = off (not upstream's --rerank) (default: %d)", d.rerank),
            keep<COMMON_ADAMAS_RERANK>),
    };
}

void common_adamas_finish(common_params & params) {
    common_adamas & a = params.adamas;
    llama_adamas_params p = llama_adamas_default_params();
    if (a.given[COMMON_ADAMAS_BUDGET])       p.budget   = parse_int(a, COMMON_ADAMAS_BUDGET, 0);
    if (a.given[COMMON_ADAMAS_DENSE_LAYERS]) p.n_dense  = parse_int(a, COMMON_ADAMAS_DENSE_LAYERS, 0);
    if (a.given[COMMON_ADAMAS_THR_Q])        p.thr_q    = parse_thr(a, COMMON_ADAMAS_THR_Q);
    if (a.given[COMMON_ADAMAS_THR_K])        p.thr_k    = parse_thr(a, COMMON_ADAMAS_THR_K);
    if (a.given[COMMON_ADAMAS_SINK])         p.n_sink   = parse_int(a, COMMON_ADAMAS_SINK, 0);
    if (a.given[COMMON_ADAMAS_RECENT]) {
        p.n_recent = a.raw[COMMON_ADAMAS_RECENT] == "auto" ? LLAMA_ADAMAS_RECENT_AUTO : parse_int(a, COMMON_ADAMAS_RECENT, 0);
    }
    if (a.given[COMMON_ADAMAS_RERANK])       p.rerank   = parse_int(a, COMMON_ADAMAS_RERANK, 1);
    if (a.given[COMMON_ADAMAS_THR_MODE]) {
        const std::string & s = a.raw[COMMON_ADAMAS_THR_MODE];
        if      (s == "rms")   p.thr_mode = LLAMA_ADAMAS_THR_RMS;
        else if (s == "fixed") p.thr_mode = LLAMA_ADAMAS_THR_FIXED;
        else bad(COMMON_ADAMAS_THR_MODE, s, "must be rms or fixed");
    }
    if (a.given[COMMON_ADAMAS_SELECT]) {
        const std::string & s = a.raw[COMMON_ADAMAS_SELECT];
        if      (s == "head")  p.select_mode = LLAMA_ADAMAS_SELECT_HEAD;
        else if (s == "group") p.select_mode = LLAMA_ADAMAS_SELECT_GROUP;
        else if (s == "exact") p.select_mode = LLAMA_ADAMAS_SELECT_EXACT;
        else bad(COMMON_ADAMAS_SELECT, s, "must be head, group or exact");
    }
    const int64_t kept = (int64_t) p.n_sink + std::max(p.n_recent, 0); // auto recent tokens fit in what the sinks leave
    if (p.budget > 0 && kept > p.budget) {
        throw std::invalid_argument(string_format(
            "error: --adamas-sink %d and --adamas-recent %s keep %lld tokens, more than --adamas-budget %d: they are "
            "attended inside the budget", p.n_sink, p.n_recent == LLAMA_ADAMAS_RECENT_AUTO ? "auto" : std::to_string(p.n_recent).c_str(),
            (long long) kept, p.budget));
    }
    if (p.budget > 0 && params.flash_attn_type == LLAMA_FLASH_ATTN_TYPE_DISABLED) {
        throw std::invalid_argument(string_format(
            "error: --adamas-budget %d needs flash attention (its sparse step reads V untransposed): "
            "leave -fa at auto or on, or use --adamas-budget 0", p.budget));
    }
    // the library's own check (the rerank * budget range among others), in its words
    if (const char * why = llama_adamas_params_check(&p)) {
        throw std::invalid_argument(string_format("error: invalid --adamas-* values: %s", why));
    }
    a.params = p;
}

void common_adamas_apply(llama_context * lctx, const common_params & params) {
    const llama_adamas_params & p = params.adamas.params;
    if (llama_adamas_set(lctx, &p) != 0) {
        // not expected: common_adamas_finish checked them with the same function
        LOG_ERR("adamas: the library refused the parameters: %s\n", llama_adamas_params_check(&p));
        return;
    }
    if (p.budget <= 0) {
        return;
    }
    if (const char * why = llama_adamas_unavailable_reason(lctx)) {
        // Said once: for a KV cache the library itself logs the reason at the first graph with the budget (the
        // warm-up run); a recurrent or hybrid model's memory never gets there, so it is said here.
        const llama_model * model = llama_get_model(lctx);
        if (llama_model_is_recurrent(model) || llama_model_is_hybrid(model)) {
            LOG_WRN("adamas: Adamas off for this model (%s): it decodes dense\n", why);
        }
        return;
    }
    LOG_INF("adamas: budget %d, %d dense layers, %d sparse layers, rerank %d, select %s, thr %s q %g k %g, "
            "sink %d, recent %d\n", p.budget, p.n_dense, llama_adamas_n_sparse_layers(lctx), p.rerank,
            p.select_mode == LLAMA_ADAMAS_SELECT_HEAD ? "head" : p.select_mode == LLAMA_ADAMAS_SELECT_GROUP ? "group" : "exact",
            p.thr_mode == LLAMA_ADAMAS_THR_RMS ? "rms" : "fixed", p.thr_q, p.thr_k, p.n_sink, llama_adamas_n_recent(&p));
}

void common_adamas_report(const llama_context * lctx) {
    if (lctx && llama_adamas_get(lctx).budget > 0) {
        LOG_INF("adamas: %lld sparse decode steps\n", (long long) llama_adamas_n_sparse_steps(lctx));
    }
}
