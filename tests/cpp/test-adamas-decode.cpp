// Adamas in the llama graph, through the C API (llama-adamas.h). References are dense decoding and
// uninterrupted runs of the same model. Checks
//   1. parameters: defaults, validation (nothing changes on a bad value), set/get round trip;
//   2. a budget >= the context gives exactly the dense logits, and no sparse step is counted;
//   3. a small budget runs sparse steps in every layer from n_dense on (or, for a model Adamas cannot
//      serve, none, with a reason); with rerank too; the exact selection (SELECT_EXACT) is deterministic,
//      differs from dense and from the code selections, and equals a rerank whose pool covers every cell;
//   4. two sequences decoded together (unified cache, and one stream per sequence), fed the same tokens: the short
//      one, whose visible context fits in the budget, attends every one of its cells although the step is sparse:
//      its logits do not depend on the other sequence's tokens nor on the budget once that covers its context, are
//      the same in both layouts (bitwise on the CPU), equal dense for a budget >= the context, and differ from dense
//      no more than dense without flash attention does (the sparse op sums in F32, the CPU's flash attention in F16);
//      and decode tokens batched with another sequence's prompt chunk get the logits of the same decode alone
//      (sparse), the chunk those of the chunk alone (dense);
//   4c. three sequences of different lengths, all past the budget, decoded together in a unified cache: each
//      query's select ranks only its own sequence's cells (a candidate list, seen on the graph's select nodes),
//      the logits equal those of the same sequences in one stream each (no list; bitwise on the CPU, where dense
//      is bitwise across the layouts too; on a device up to the layouts' rounding), and those of sequences 0 and 2
//      do not change when sequence 1 holds other tokens; for the code selection with sinks and recent tokens and
//      for the exact one;
//   4d. 128 streams whose codes go stale (new key thresholds) decode one step together: the graph that rebuilds
//       every stream's codes fits (graph_max_nodes counts Adamas' nodes), and its logits equal those of codes
//       written with the new thresholds in the first place;
//   5. a state saved and loaded into a new context continues with bitwise the same logits, and its
//      codes equal the encoding of its K (llama_adamas_verify_codes: every used cell, every layer);
//   6. after a context shift (seq_rm + seq_add) the codes equal the encoding of the shifted K;
//   7. the same for q8_0 and q4_0 K/V caches; and a budget set on a live context re-encodes the cache.
// usage: test-adamas-decode MODEL.gguf [N_GPU_LAYERS]
#include "llama.h"
#include "llama-adamas.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

static int n_fail = 0;

#define CHECK(cond, ...) do { if (!(cond)) { n_fail++; \
    fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); fprintf(stderr, __VA_ARGS__); \
    fprintf(stderr, "\n"); } } while (0)

#define REQUIRE(cond, ...) do { const bool ok_ = (cond); CHECK(ok_, __VA_ARGS__); if (!ok_) exit(1); } while (0)

static void quiet_log(ggml_log_level level, const char * text, void *) {
    if (level >= GGML_LOG_LEVEL_ERROR || getenv("ADAMAS_TEST_LOG")) fputs(text, stderr);
}

// counts the select nodes of the graphs computed, and those that rank candidate lists (src[3])
struct select_nodes {
    int64_t n = 0, n_list = 0;
};

static bool count_selects(ggml_tensor * t, bool ask, void * user) {
    if (ask && t->op == GGML_OP_ADAMAS_SELECT) {
        auto * c = (select_nodes *) user;
        c->n++;
        c->n_list += t->src[3] != nullptr;
    }
    return false; // no data wanted
}

struct runner {
    llama_model * model;
    int n_vocab;
    int ngl;

    llama_context * make(int n_ctx, int n_seq, bool unified, ggml_type type_kv, const llama_adamas_params & ap, bool may_fail = false,
                         select_nodes * sel = nullptr, bool flash = true) const {
        llama_context_params cp = llama_context_default_params();
        if (sel) {
            cp.cb_eval = count_selects;
            cp.cb_eval_user_data = sel;
        }
        cp.n_ctx      = n_ctx;
        cp.n_batch    = n_ctx;
        cp.n_ubatch   = 512;
        cp.n_seq_max  = n_seq;
        cp.kv_unified = unified;
        cp.type_k     = type_kv;
        cp.type_v     = type_kv;
        cp.flash_attn_type = flash ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED; // off: Adamas is off too
        cp.n_threads = cp.n_threads_batch = 2;
        llama_context * ctx = llama_init_from_model(model, cp);
        if (!ctx && may_fail) {
            return nullptr;
        }
        REQUIRE(ctx != nullptr, "context creation failed");
        REQUIRE(llama_adamas_set(ctx, &ap) == 0, "llama_adamas_set refused valid parameters");
        return ctx;
    }

    // Evaluates toks at pos0.. for sequence seq; appends the last token's logits to *out.
    void eval(llama_context * ctx, const std::vector<llama_token> & toks, int pos0, int seq, std::vector<float> * out) const {
        llama_batch b = llama_batch_init((int) toks.size(), 0, 1);
        for (size_t i = 0; i < toks.size(); i++) {
            b.token[i] = toks[i]; b.pos[i] = pos0 + (int) i; b.n_seq_id[i] = 1; b.seq_id[i][0] = seq;
            b.logits[i] = i + 1 == toks.size();
        }
        b.n_tokens = (int) toks.size();
        REQUIRE(llama_decode(ctx, b) == 0, "decode of %zu tokens at %d (seq %d) failed", toks.size(), pos0, seq);
        if (out) {
            const float * l = llama_get_logits_ith(ctx, -1);
            out->insert(out->end(), l, l + n_vocab);
        }
        llama_batch_free(b);
    }

    // Greedy continuation of sequence seq from position pos for n steps (one token per step);
    // returns the logits of every step.
    std::vector<float> cont(llama_context * ctx, std::vector<float> last, int pos, int n, int seq = 0) const {
        std::vector<float> all;
        for (int i = 0; i < n; i++) {
            const float * l = last.data() + last.size() - n_vocab;
            const llama_token t = (llama_token) (std::max_element(l, l + n_vocab) - l);
            last.clear();
            eval(ctx, {t}, pos++, seq, &last);
            all.insert(all.end(), last.begin(), last.end());
        }
        return all;
    }
};

static double max_rel_diff(const std::vector<float> & a, const std::vector<float> & b) {
    if (a.size() != b.size()) {
        return INFINITY;
    }
    double m = 0.0, s = 1e-30;
    for (size_t i = 0; i < a.size(); i++) {
        m = std::max(m, (double) std::fabs(a[i] - b[i]));
        s = std::max(s, (double) std::fabs(b[i]));
    }
    return m/s;
}

// Whether dense decoding gave bitwise the same logits in a unified and in per-stream caches (dense_u, dense_s): the
// premise of asserting that Adamas does too. Not on a device, whose flash attention sums a view laid out otherwise
// in another order; nor on every CPU: on the H200 machine's Xeon the CPU's dense logits differ by ~1e-4 between the
// layouts where the 2-core AMD EPYC of CI gives them bitwise. Where the premise fails, the callers bound the
// difference instead, and this says so once.
static bool layouts_bitwise(const runner & R, const std::vector<float> & dense_u, const std::vector<float> & dense_s) {
    const bool same = R.ngl == 0 && dense_u == dense_s;
    if (R.ngl == 0 && !same) {
        printf("note: this CPU's dense logits differ between a unified and per-stream caches (max rel diff %g): "
               "the layouts are compared within a bound, not bitwise\n", max_rel_diff(dense_u, dense_s));
    }
    return same;
}

static std::vector<llama_token> random_tokens(std::mt19937 & rng, int n, int n_vocab) {
    std::uniform_int_distribution<int> d(3, n_vocab - 1);
    std::vector<llama_token> t(n);
    for (auto & x : t) x = d(rng);
    return t;
}

int main(int argc, char ** argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL.gguf [N_GPU_LAYERS]\n", argv[0]);
        return 2;
    }
    llama_log_set(quiet_log, nullptr);
    llama_backend_init();

    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = argc > 2 ? atoi(argv[2]) : 0;
    llama_model * model = llama_model_load_from_file(argv[1], mp);
    REQUIRE(model != nullptr, "cannot load %s", argv[1]);
    runner R { model, llama_vocab_n_tokens(llama_model_get_vocab(model)), mp.n_gpu_layers };
    const int n_layer = llama_model_n_layer(model);

    std::mt19937 rng(1234);

    // ---- 1. parameters ----
    llama_adamas_params def = llama_adamas_default_params();
    // off by default; the other values are chosen by measurement (docs/accuracy.md), and the Python tests check
    // that both sides agree on them
    CHECK(def.budget == 0 && def.n_dense >= 0, "unexpected defaults");
    CHECK(llama_adamas_params_check(&def) == nullptr, "defaults rejected");
    {
        llama_context * ctx = R.make(512, 1, true, GGML_TYPE_F16, def);
        llama_adamas_params good = def;
        good.budget = 64; good.thr_q = 0.7f; good.n_sink = 4; good.n_recent = 16;
        CHECK(llama_adamas_set(ctx, &good) == 0, "valid parameters refused");
        // the exact reference takes any rerank (it does not use it)
        llama_adamas_params exact = def;
        exact.budget = 64; exact.select_mode = LLAMA_ADAMAS_SELECT_EXACT; exact.rerank = 8;
        CHECK(llama_adamas_params_check(&exact) == nullptr, "exact selection refused");
        const llama_adamas_params bads[] = {
            [] { auto p = llama_adamas_default_params(); p.budget = -1;    return p; }(),
            [] { auto p = llama_adamas_default_params(); p.n_dense = -1;   return p; }(),
            [] { auto p = llama_adamas_default_params(); p.thr_mode = 7;   return p; }(),
            [] { auto p = llama_adamas_default_params(); p.thr_q = 0.0f;   return p; }(),
            [] { auto p = llama_adamas_default_params(); p.thr_k = -1.0f;  return p; }(),
            [] { auto p = llama_adamas_default_params(); p.thr_k = NAN;    return p; }(),
            [] { auto p = llama_adamas_default_params(); p.select_mode = 5; return p; }(),
            [] { auto p = llama_adamas_default_params(); p.n_sink = -2;    return p; }(),
            [] { auto p = llama_adamas_default_params(); p.budget = 8; p.n_sink = 4; p.n_recent = 8; return p; }(),
            [] { auto p = llama_adamas_default_params(); p.rerank = 0;     return p; }(),
            [] { auto p = llama_adamas_default_params(); p.budget = 16; p.rerank = 4; p.n_sink = 9; p.n_recent = 8; return p; }(),
            [] { auto p = llama_adamas_default_params(); p.select_mode = 3; return p; }(),
            [] { auto p = llama_adamas_default_params(); p.budget = 16; p.select_mode = LLAMA_ADAMAS_SELECT_EXACT; p.n_sink = 9; p.n_recent = 8; return p; }(),
        };
        for (const auto & b : bads) {
            CHECK(llama_adamas_params_check(&b) != nullptr, "bad parameters accepted");
            CHECK(llama_adamas_set(ctx, &b) == -1, "llama_adamas_set accepted bad parameters");
        }
        const llama_adamas_params got = llama_adamas_get(ctx);
        CHECK(memcmp(&got, &good, sizeof(got)) == 0, "a refused set changed the parameters");
        llama_free(ctx);
    }

    const bool servable = [&] {
        llama_adamas_params p = def; p.budget = 32;
        llama_context * ctx = R.make(512, 1, true, GGML_TYPE_F16, p);
        const char * why = llama_adamas_unavailable_reason(ctx);
        const int n_sparse = llama_adamas_n_sparse_layers(ctx);
        if (why) {
            printf("Adamas off for this model: %s\n", why);
            CHECK(n_sparse == 0, "unavailable, yet %d sparse layers", n_sparse);
        } else {
            // every layer from n_dense on, but for sliding-window layers (they stay dense)
            CHECK(n_sparse >= 1 && n_sparse <= n_layer - 2, "%d sparse layers of %d", n_sparse, n_layer);
            printf("%d of %d layers sparse\n", n_sparse, n_layer);
        }
        // per layer: NULL exactly for the sparse ones; the first n_dense and the sliding-window layers say why
        int n_null = 0, n_swa_layers = 0;
        for (int il = 0; il < n_layer; ++il) {
            const char * r = llama_adamas_layer_reason(ctx, il);
            n_null += r == nullptr;
            const bool swa = r && strstr(r, "sliding-window layer") != nullptr;
            n_swa_layers += swa;
            if (il < p.n_dense) {
                CHECK(r != nullptr, "layer %d < n_dense has no reason to be dense", il);
            }
            if (why && !swa) {
                CHECK(r != nullptr, "layer %d: no reason given, yet Adamas is off (%s)", il, why);
            }
        }
        CHECK(n_null == n_sparse, "%d layers without a reason, %d sparse layers", n_null, n_sparse);
        CHECK((n_swa_layers > 0) == (llama_model_n_swa(R.model) > 0), "%d sliding-window layers reported, n_swa %d",
              n_swa_layers, (int) llama_model_n_swa(R.model));
        CHECK(strcmp(llama_adamas_layer_reason(ctx, -1), "no such layer") == 0 &&
              strcmp(llama_adamas_layer_reason(ctx, n_layer), "no such layer") == 0, "out-of-range layers accepted");
        {
            llama_adamas_params off = p; off.budget = 0;
            llama_adamas_set(ctx, &off);
            for (int il = 0; il < n_layer; ++il) {
                CHECK(llama_adamas_layer_reason(ctx, il) != nullptr, "layer %d sparse at budget 0", il);
            }
        }
        llama_free(ctx);
        return why == nullptr;
    }();

    const int n_prompt = 300;
    const int n_gen    = 12;
    const std::vector<llama_token> prompt = random_tokens(rng, n_prompt, R.n_vocab);

    auto run = [&](ggml_type type_kv, const llama_adamas_params & ap, int64_t * steps) {
        llama_context * ctx = R.make(1024, 1, true, type_kv, ap);
        std::vector<float> last;
        R.eval(ctx, prompt, 0, 0, &last);
        std::vector<float> all = R.cont(ctx, last, n_prompt, n_gen);
        if (steps) *steps = llama_adamas_n_sparse_steps(ctx);
        llama_free(ctx);
        return all;
    };

    // ---- 2. budget >= context: dense, exactly ----
    const std::vector<float> dense = run(GGML_TYPE_F16, def, nullptr);
    {
        llama_adamas_params p = def; p.budget = 1024;
        int64_t steps = -1;
        const std::vector<float> big = run(GGML_TYPE_F16, p, &steps);
        CHECK(big == dense, "budget >= context differs from dense (max rel diff %g)", max_rel_diff(big, dense));
        CHECK(steps == 0, "%lld sparse steps with budget >= context", (long long) steps);
    }

    // ---- 3. a small budget is sparse ----
    {
        llama_adamas_params p = def; p.budget = 32; p.rerank = 1;
        int64_t steps = -1;
        const std::vector<float> sparse = run(GGML_TYPE_F16, p, &steps);
        CHECK(steps == (servable ? n_gen : 0), "%lld sparse steps, expected %d", (long long) steps, servable ? n_gen : 0);
        bool finite = true;
        for (float x : sparse) finite &= std::isfinite(x);
        CHECK(finite, "non-finite logits at budget 32");
        if (!servable) {
            CHECK(sparse == dense, "a model Adamas cannot serve did not decode dense");
        }
        printf("budget 32: %lld sparse steps, logits vs dense: max rel diff %.3g\n", (long long) steps, max_rel_diff(sparse, dense));

        // rerank: a pool of 4 x 32 by codes, the 32 best by exact logits; the same number of sparse steps, other
        // cells than the plain selection's (the pool is 128 of ~300 visible), finite logits; the CPU and CUDA
        // both serve it (a device that could not would turn Adamas off and say so: dense logits)
        p.rerank = 4;
        llama_context * ctx = R.make(1024, 1, true, GGML_TYPE_F16, p);
        const char * why_r = llama_adamas_unavailable_reason(ctx);
        const bool on_r = servable && why_r == nullptr;
        std::vector<float> last;
        R.eval(ctx, prompt, 0, 0, &last);
        const std::vector<float> rr = R.cont(ctx, last, n_prompt, n_gen);
        const int64_t steps_r = llama_adamas_n_sparse_steps(ctx);
        llama_free(ctx);
        CHECK(on_r == servable, "rerank 4 turned Adamas off: %s", why_r ? why_r : "?");
        CHECK(steps_r == (on_r ? steps : 0), "rerank: %lld sparse steps, plain %lld", (long long) steps_r, (long long) steps);
        bool finite_r = true;
        for (float x : rr) finite_r &= std::isfinite(x);
        CHECK(finite_r, "non-finite logits with rerank");
        if (on_r) {
            CHECK(rr != sparse, "rerank 4 gave exactly the logits of the plain selection");
        } else {
            CHECK(rr == dense, "rerank off (%s) but the logits are not dense", why_r ? why_r : "model not served");
        }
        printf("budget 32, rerank 4: %s, logits vs dense: max rel diff %.3g\n", on_r ? "sparse" : why_r ? why_r : "dense",
               max_rel_diff(rr, dense));

        // exact: each head's true top 32 by q.k over all ~300 visible cells. Its pool is every cell of the view in
        // code rank order, the pool a rerank of 32 x 32 (>= the 1024 cells of the cache) also has, so the two
        // must agree bitwise; and a second run must repeat it bitwise (the select and the threshold are exact)
        auto run_ctx = [&](const llama_adamas_params & ap, int64_t * steps, const char ** why) {
            llama_context * ctx = R.make(1024, 1, true, GGML_TYPE_F16, ap);
            *why = llama_adamas_unavailable_reason(ctx);
            std::vector<float> l;
            R.eval(ctx, prompt, 0, 0, &l);
            std::vector<float> all = R.cont(ctx, l, n_prompt, n_gen);
            *steps = llama_adamas_n_sparse_steps(ctx);
            llama_free(ctx);
            return all;
        };
        llama_adamas_params pe = p; pe.select_mode = LLAMA_ADAMAS_SELECT_EXACT; pe.rerank = 1;
        int64_t steps_e = -1, steps_e2 = -1, steps_w = -1;
        const char * why_e = nullptr, * why_w = nullptr;
        const std::vector<float> ex  = run_ctx(pe, &steps_e, &why_e);
        const std::vector<float> ex2 = run_ctx(pe, &steps_e2, &why_e);
        llama_adamas_params pw = p; pw.rerank = 32; // 32 x 32 = the whole cache
        const std::vector<float> wide = run_ctx(pw, &steps_w, &why_w);
        const bool on_e = servable && why_e == nullptr;
        CHECK(ex == ex2, "exact selection is not deterministic (max rel diff %g)", max_rel_diff(ex, ex2));
        CHECK(steps_e == (on_e ? steps : 0), "exact: %lld sparse steps, plain %lld", (long long) steps_e, (long long) steps);
        bool finite_e = true;
        for (float x : ex) finite_e &= std::isfinite(x);
        CHECK(finite_e, "non-finite logits with the exact selection");
        if (on_e) {
            CHECK(ex != dense, "exact top 32 of ~300 cells gave exactly the dense logits");
            CHECK(ex != sparse, "exact top 32 gave exactly the logits of the code selection");
            CHECK(!on_r || ex != rr, "exact top 32 gave exactly the logits of rerank 4");
            if (why_w == nullptr) {
                CHECK(ex == wide, "exact differs from a rerank pool covering every cell (max rel diff %g)", max_rel_diff(ex, wide));
            }
        } else {
            CHECK(ex == dense, "exact off (%s) but the logits are not dense", why_e ? why_e : "model not served");
        }
        printf("budget 32, exact: %s, logits vs dense: max rel diff %.3g (code selection %.3g, rerank 4 %.3g)\n",
               on_e ? "sparse" : why_e ? why_e : "dense", max_rel_diff(ex, dense), max_rel_diff(sparse, dense), max_rel_diff(rr, dense));

        // rerank with 4 sinks and 8 recent tokens: kept first, inside the budget (the op's scalar reference checks
        // which cells; here: still sparse, other logits than without them, deterministic)
        p.n_sink = 4; p.n_recent = 8;
        std::vector<float> rs[2];
        for (auto & out : rs) {
            ctx = R.make(1024, 1, true, GGML_TYPE_F16, p);
            R.eval(ctx, prompt, 0, 0, &last);
            out = R.cont(ctx, last, n_prompt, n_gen);
            CHECK(llama_adamas_n_sparse_steps(ctx) == (on_r ? steps : 0), "rerank with sinks: %lld sparse steps",
                  (long long) llama_adamas_n_sparse_steps(ctx));
            llama_free(ctx);
        }
        CHECK(rs[0] == rs[1], "rerank with sinks: two runs differ");
        if (on_r) {
            CHECK(rs[0] != rr, "sinks and recent tokens changed nothing under rerank");
        }
    }

    // ---- 4. two sequences, decoded together (one token each per step) ----
    // The short sequence's context (40 + 6 cells) fits in the budget (64), the long one's (400) does not, so the steps
    // are sparse, and the short sequence's select, which ranks only its own cells, takes every one of them. Every run
    // is fed the same tokens (the short sequence's dense greedy continuation), so that the runs compare step by step.
    // Exact (bitwise) properties:
    //   - a budget >= the context: no sparse step, the dense logits;
    //   - its logits do not depend on the other sequence's tokens (no cell, code or candidate list of the other
    //     sequence reaches its select or attention), nor on the budget once that covers its context (none of its
    //     cells is dropped);
    //   - they are the same in a unified cache (its select ranks a candidate list) and with one stream per sequence
    //     (no list), on the CPU: its 40-token prefill and the 2-token steps take upstream's flash-attention path that
    //     skips masked cells, so the dense layers (n_dense) sum the same cells in the same order in both layouts.
    // (A list that misses one visible cell, tried, fails the last check and the bound against dense below.)
    // Against dense decoding they agree only up to rounding, not to a fixed tolerance: the sparse op attends over the
    // same cells in F32, while upstream's flash attention on the CPU rounds Q to F16 and accumulates V in F16. On a
    // real model (SmolLM2-135M) that rounding, 7e-4 at the first sparse layer, grows over 28 layers to ~3e-2 in the
    // logits, as large as dense with flash attention on vs off, and flips a near-tied greedy token (docs/perf-notes.md).
    // The bound is therefore the model's own: no further from dense than dense without flash attention is.
    {
        const int n_short = 40, n_long = 400, n_steps = 6;
        const std::vector<llama_token> other  = random_tokens(rng, n_long, R.n_vocab);
        const std::vector<llama_token> other2 = random_tokens(rng, n_long, R.n_vocab); // the same length, other tokens
        const std::vector<llama_token> shrt(prompt.begin(), prompt.begin() + n_short);
        std::vector<llama_token> idle; // a third sequence that does not decode: see pair()
        {
            std::mt19937 rng_i(4567); // not rng: the later cases keep their tokens
            idle = random_tokens(rng_i, 200, R.n_vocab);
        }

        std::vector<llama_token> feed; // the short sequence's dense greedy continuation, alone
        {
            llama_context * ref = R.make(1536, 3, true, GGML_TYPE_F16, def);
            std::vector<float> last;
            R.eval(ref, shrt, 0, 1, &last);
            for (int i = 0; i < n_steps; i++) {
                feed.push_back((llama_token) (std::max_element(last.begin(), last.end()) - last.begin()));
                last.clear();
                R.eval(ref, { feed.back() }, n_short + i, 1, &last);
            }
            llama_free(ref);
        }
        // the short sequence's logits of every step, decoded in one batch with the long one (which repeats its last
        // token). The idle sequence makes the unified cache's view (<= 652 cells: 768) longer than the batch's sequences
        // (<= 406 cells: lists of 512), so that there the selects rank candidate lists; per stream it has its own stream.
        auto pair = [&](bool unified, const llama_adamas_params & ap, const std::vector<llama_token> & partner, bool flash,
                        int64_t * steps, select_nodes * sel = nullptr) {
            llama_context * ctx = R.make(1536, 3, unified, GGML_TYPE_F16, ap, false, sel, flash); // 512 cells a stream
            R.eval(ctx, partner, 0, 0, nullptr);
            R.eval(ctx, idle, 0, 2, nullptr);
            R.eval(ctx, shrt, 0, 1, nullptr);
            if (sel) {
                *sel = select_nodes();
            }
            std::vector<float> got;
            for (int i = 0; i < n_steps; i++) {
                llama_batch b = llama_batch_init(2, 0, 1);
                b.token[0] = partner.back(); b.pos[0] = n_long + i;  b.n_seq_id[0] = 1; b.seq_id[0][0] = 0; b.logits[0] = 0;
                b.token[1] = feed[i];        b.pos[1] = n_short + i; b.n_seq_id[1] = 1; b.seq_id[1][0] = 1; b.logits[1] = 1;
                b.n_tokens = 2;
                REQUIRE(llama_decode(ctx, b) == 0, "two-sequence decode failed");
                llama_batch_free(b);
                const float * lo = llama_get_logits_ith(ctx, 1);
                got.insert(got.end(), lo, lo + R.n_vocab);
            }
            if (steps) {
                *steps = llama_adamas_n_sparse_steps(ctx);
            }
            llama_free(ctx);
            return got;
        };
        std::vector<float> sparse_of[2], dense_of[2];
        double d_fa_max = 0.0;
        for (bool unified : { true, false }) {
            const char * kind = unified ? "unified" : "per-stream";
            int64_t steps = -1;
            const std::vector<float> dense2 = pair(unified, def, other, true, nullptr);
            dense_of[unified] = dense2;
            const std::vector<float> nofa   = pair(unified, def, other, false, nullptr);

            llama_adamas_params pbig = def; pbig.budget = 1536;
            const std::vector<float> big = pair(unified, pbig, other, true, &steps);
            CHECK(big == dense2 && steps == 0, "%s cache: budget >= context: %lld sparse steps, logits vs dense: max rel diff %g",
                  kind, (long long) steps, max_rel_diff(big, dense2));

            // recent tokens fixed (not auto: that grows with the budget and reorders the attended cells' sum)
            llama_adamas_params p = def; p.budget = 64; p.n_recent = 8;
            select_nodes sel;
            const std::vector<float> sp = pair(unified, p, other, true, &steps, &sel);
            if (servable) {
                CHECK(steps == n_steps, "%s cache: %lld sparse steps, expected %d", kind, (long long) steps, n_steps);
                CHECK(sel.n > 0 && sel.n_list == (unified ? sel.n : 0), "%s cache: %lld of %lld select nodes rank candidate lists",
                      kind, (long long) sel.n_list, (long long) sel.n);
            }
            const std::vector<float> sp2 = pair(unified, p, other2, true, nullptr);
            CHECK(sp2 == sp, "%s cache: the short sequence's logits depend on the other sequence's tokens (max rel diff %g)",
                  kind, max_rel_diff(sp2, sp));
            llama_adamas_params pfit = p; pfit.budget = n_short + n_steps; // exactly the short sequence's last context
            const std::vector<float> fit = pair(unified, pfit, other, true, nullptr);
            CHECK(fit == sp, "%s cache: the short sequence's logits differ between budgets %d and %d, both covering its context "
                  "(max rel diff %g)", kind, pfit.budget, p.budget, max_rel_diff(fit, sp));

            const double d = max_rel_diff(sp, dense2), d_fa = max_rel_diff(nofa, dense2);
            printf("two sequences (%s): the short one, within the budget, vs dense: max rel diff %.3g (dense without flash "
                   "attention %.3g)\n", kind, d, d_fa);
            CHECK(d <= std::max(1e-3, 2*d_fa), "%s cache: the short sequence differs from dense by %g (dense without flash "
                  "attention: %g)", kind, d, d_fa);
            sparse_of[unified] = sp;
            d_fa_max = std::max(d_fa_max, d_fa);
        }
        if (layouts_bitwise(R, dense_of[1], dense_of[0])) {
            CHECK(sparse_of[0] == sparse_of[1], "the short sequence's logits differ between a unified and per-stream caches "
                  "(max rel diff %g)", max_rel_diff(sparse_of[1], sparse_of[0]));
        } else {
            // flash attention (the dense layers) need not sum a view laid out otherwise in the same order
            CHECK(max_rel_diff(sparse_of[1], sparse_of[0]) <= std::max(1e-3, 2*d_fa_max), "the short sequence's logits differ "
                  "between a unified and per-stream caches by %g", max_rel_diff(sparse_of[1], sparse_of[0]));
        }
    }

    // ---- 4b. a batch mixing decode tokens with another sequence's prompt chunk (llama-server under load) ----
    // The decode tokens must get what they get in a batch of their own (a sparse step), and the chunk what it
    // gets alone (dense, exact): the batch is split, decode tokens first. The chunk's sequence already holds
    // more than the budget, so that a chunk token decoded sparse would show.
    for (bool unified : { true, false }) {
        const char * kind = unified ? "unified" : "per-stream";
        const int n_ctx_prefix = 200, n_chunk_prefix = 100, n_chunk = 40;
        const std::vector<llama_token> pre0 = random_tokens(rng, n_ctx_prefix, R.n_vocab);
        const std::vector<llama_token> pre1 = random_tokens(rng, n_ctx_prefix, R.n_vocab);
        const std::vector<llama_token> pre2 = random_tokens(rng, n_chunk_prefix, R.n_vocab);
        const std::vector<llama_token> chunk = random_tokens(rng, n_chunk, R.n_vocab);
        const llama_token t0 = pre0[7], t1 = pre1[9];
        llama_adamas_params p = def; p.budget = 32;

        auto setup = [&]() {
            llama_context * c = R.make(1024, 3, unified, GGML_TYPE_F16, p);
            R.eval(c, pre0, 0, 0, nullptr);
            R.eval(c, pre1, 0, 2, nullptr);
            R.eval(c, pre2, 0, 1, nullptr);
            return c;
        };
        // tokens (seq, pos, token, logits) as one batch; returns the logits of the flagged ones, in batch order
        struct tok { int seq, pos; llama_token t; bool out; };
        auto run = [&](llama_context * c, const std::vector<tok> & ts) {
            llama_batch b = llama_batch_init((int) ts.size(), 0, 1);
            for (size_t i = 0; i < ts.size(); i++) {
                b.token[i] = ts[i].t; b.pos[i] = ts[i].pos; b.n_seq_id[i] = 1; b.seq_id[i][0] = ts[i].seq; b.logits[i] = ts[i].out;
            }
            b.n_tokens = (int) ts.size();
            REQUIRE(llama_decode(c, b) == 0, "%s: mixed-batch decode failed", kind);
            std::vector<float> out;
            for (size_t i = 0; i < ts.size(); i++) {
                if (ts[i].out) {
                    const float * l = llama_get_logits_ith(c, (int) i);
                    out.insert(out.end(), l, l + R.n_vocab);
                }
            }
            llama_batch_free(b);
            return out;
        };
        // sequences 0 and 2 decode, 1 takes the chunk: in batch order 0, 1, 2 upstream's split for one stream per
        // sequence would put the chunk's first token in the decode ubatch
        std::vector<tok> dec = { { 0, n_ctx_prefix, t0, true }, { 2, n_ctx_prefix, t1, true } };
        std::vector<tok> chk;
        for (int i = 0; i < n_chunk; i++) {
            chk.push_back({ 1, n_chunk_prefix + i, chunk[i], i + 1 == n_chunk });
        }

        // reference: the decode tokens in a batch of their own, then the chunk in another
        llama_context * ref = setup();
        const int64_t s0 = llama_adamas_n_sparse_steps(ref);
        const std::vector<float> want_dec = run(ref, dec);
        const std::vector<float> want_chk = run(ref, chk);
        const int64_t ref_sparse = llama_adamas_n_sparse_steps(ref) - s0;
        llama_free(ref);

        // one batch: decode token, the chunk, decode token
        llama_context * ctx = setup();
        const int64_t s1 = llama_adamas_n_sparse_steps(ctx);
        std::vector<tok> mixed = { dec[0] };
        mixed.insert(mixed.end(), chk.begin(), chk.end());
        mixed.push_back(dec[1]);
        const std::vector<float> got = run(ctx, mixed);
        const int64_t got_sparse = llama_adamas_n_sparse_steps(ctx) - s1;
        CHECK(llama_adamas_verify_codes(ctx) == 0, "%s: codes differ from K after a mixed batch", kind);
        llama_free(ctx);

        // got: seq 0's logits, the chunk's last, seq 2's
        REQUIRE(got.size() == 3*(size_t) R.n_vocab, "%s: expected 3 logit rows", kind);
        const std::vector<float> g0(got.begin(), got.begin() + R.n_vocab);
        const std::vector<float> gc(got.begin() + R.n_vocab, got.begin() + 2*R.n_vocab);
        const std::vector<float> g1(got.begin() + 2*R.n_vocab, got.end());
        const std::vector<float> w0(want_dec.begin(), want_dec.begin() + R.n_vocab);
        const std::vector<float> w1(want_dec.begin() + R.n_vocab, want_dec.end());
        // the same ubatches, so the same sums: equal but for rounding (a model Adamas does not serve keeps
        // upstream's split, whose ubatches mix the two, so only dense rounding)
        const double tol = servable ? 1e-7 : 1e-3;
        CHECK(max_rel_diff(g0, w0) < tol && max_rel_diff(g1, w1) < tol,
              "%s: decode tokens in a mixed batch differ from the same decode alone by %g, %g", kind,
              max_rel_diff(g0, w0), max_rel_diff(g1, w1));
        CHECK(max_rel_diff(gc, want_chk) < tol, "%s: the prompt chunk in a mixed batch differs from the chunk alone by %g",
              kind, max_rel_diff(gc, want_chk));
        if (servable) {
            // one sparse ubatch per run of consecutive decoding sequences: 1 (unified) or 2
            CHECK(ref_sparse == (unified ? 1 : 2) && got_sparse == ref_sparse, "%s: sparse steps: %lld alone, %lld mixed", kind,
                  (long long) ref_sparse, (long long) got_sparse);
        }
    }

    // ---- 4c. several sequences of a unified cache: each query ranks its own sequence's cells ----
    {
        const int n_seq = 3, n_steps = 5;
        const int lens[n_seq] = { 150, 420, 260 };
        std::vector<std::vector<llama_token>> seqs;
        for (int s = 0; s < n_seq; s++) {
            seqs.push_back(random_tokens(rng, lens[s], R.n_vocab));
        }
        // the same, but for sequence 1's tokens (of the same length): a partner that must not matter to the others
        std::vector<std::vector<llama_token>> seqs_b = seqs;
        {
            std::mt19937 rng_b(4321); // not rng: the later cases keep their tokens
            seqs_b[1] = random_tokens(rng_b, lens[1], R.n_vocab);
        }
        // all sequences prefilled one after the other, in chunks of 32 tokens (dense: past the budget only the decode
        // steps are sparse), then n_steps steps of one greedy token per sequence in one batch; the logits of every step.
        // Chunks of fewer than 64 tokens, and steps of several, take the path of upstream's CPU flash attention that
        // skips masked cells one by one (not the tiled one, nor the split-KV one of a single query): the dense layers
        // then sum a sequence's cells in the same order in both layouts, and the whole prompt at once would not
        // (SmolLM2-135M: dense unified vs per-stream 0.03, enough to swap many cells of a top 32).
        auto run_multi = [&](bool unified, const llama_adamas_params & ap, int64_t * steps, select_nodes * sel,
                             const std::vector<std::vector<llama_token>> & ss) {
            llama_context * ctx = R.make(1536, n_seq, unified, GGML_TYPE_F16, ap, false, sel); // 512 cells a stream
            std::vector<std::vector<float>> last(n_seq);
            for (int s = 0; s < n_seq; s++) {
                for (int i0 = 0; i0 < lens[s]; i0 += 32) {
                    const int i1 = std::min(lens[s], i0 + 32);
                    R.eval(ctx, std::vector<llama_token>(ss[s].begin() + i0, ss[s].begin() + i1), i0, s,
                           i1 == lens[s] ? &last[s] : nullptr);
                }
            }
            if (sel) {
                *sel = select_nodes();
            }
            std::vector<float> all;
            for (int i = 0; i < n_steps; i++) {
                llama_batch b = llama_batch_init(n_seq, 0, 1);
                for (int s = 0; s < n_seq; s++) {
                    const float * l = last[s].data();
                    b.token[s] = (llama_token) (std::max_element(l, l + R.n_vocab) - l);
                    b.pos[s] = lens[s] + i; b.n_seq_id[s] = 1; b.seq_id[s][0] = s; b.logits[s] = 1;
                }
                b.n_tokens = n_seq;
                REQUIRE(llama_decode(ctx, b) == 0, "%d-sequence decode failed", n_seq);
                llama_batch_free(b);
                for (int s = 0; s < n_seq; s++) {
                    const float * l = llama_get_logits_ith(ctx, s);
                    last[s].assign(l, l + R.n_vocab);
                    all.insert(all.end(), l, l + R.n_vocab);
                }
            }
            *steps = llama_adamas_n_sparse_steps(ctx);
            llama_free(ctx);
            return all;
        };
        // the logits of sequences 0 and 2 (every step)
        auto seqs_02 = [&](const std::vector<float> & all) {
            std::vector<float> r;
            for (int i = 0; i < n_steps; i++) {
                for (int s : { 0, 2 }) {
                    const auto * l = all.data() + ((size_t) i*n_seq + s)*R.n_vocab;
                    r.insert(r.end(), l, l + R.n_vocab);
                }
            }
            return r;
        };
        llama_adamas_params pc = def; pc.budget = 32; pc.n_sink = 2; pc.n_recent = 4;
        llama_adamas_params pe = def; pe.budget = 32; pe.select_mode = LLAMA_ADAMAS_SELECT_EXACT;
        int64_t steps_d = -1;
        select_nodes sel_d;
        const std::vector<float> dense_m = run_multi(true, def, &steps_d, &sel_d, seqs);
        CHECK(sel_d.n == 0, "dense: %lld select nodes", (long long) sel_d.n);
        const std::vector<float> dense_s = run_multi(false, def, &steps_d, &sel_d, seqs);
        const double d_dense = max_rel_diff(dense_m, dense_s);
        // the premise of the bitwise comparisons below (not on a device, nor on every CPU: see layouts_bitwise)
        const bool bitwise = layouts_bitwise(R, dense_m, dense_s);
        for (const auto & ap : { pc, pe }) {
            const char * mode = ap.select_mode == LLAMA_ADAMAS_SELECT_EXACT ? "exact" : "codes";
            int64_t steps_u = -1, steps_s = -1;
            select_nodes sel_u, sel_s;
            const std::vector<float> uni = run_multi(true, ap, &steps_u, &sel_u, seqs);
            const std::vector<float> per = run_multi(false, ap, &steps_s, &sel_s, seqs);
            const double d = max_rel_diff(uni, per);
            printf("%d sequences (%s): unified vs per-stream max rel diff %.3g (dense %.3g), vs dense %.3g; %lld/%lld select nodes with lists\n",
                   n_seq, mode, d, d_dense, max_rel_diff(uni, dense_m), (long long) sel_u.n_list, (long long) sel_u.n);
            bool finite = true;
            for (float x : uni) finite &= std::isfinite(x);
            CHECK(finite, "%s: non-finite logits in the unified cache", mode);
            if (!servable) {
                CHECK(uni == dense_m && per == dense_s, "%s: a model Adamas cannot serve did not decode dense", mode);
                continue;
            }
            CHECK(steps_u == n_steps && steps_s == n_steps, "%s: %lld and %lld sparse steps, expected %d", mode,
                  (long long) steps_u, (long long) steps_s, n_steps);
            // the unified stream's view (1024 cells) is longer than any sequence (<= 425 cells: lists of 512); per stream the view is 512 cells, no shorter than a list
            CHECK(sel_u.n > 0 && sel_u.n_list == sel_u.n, "%s: %lld of %lld select nodes rank candidate lists in the unified cache",
                  mode, (long long) sel_u.n_list, (long long) sel_u.n);
            CHECK(sel_s.n > 0 && sel_s.n_list == 0, "%s: %lld of %lld select nodes rank lists with one stream per sequence",
                  mode, (long long) sel_s.n_list, (long long) sel_s.n);
            // The same cells in the same rank order (a sequence's cells are in position order in both layouts): on the
            // CPU, where dense is bitwise across the layouts, bitwise. On a device up to the layouts' rounding: dense
            // differs by ~1e-4 between them, and that noise in q and k can move a coordinate across a code bucket
            // edge and so swap a cell or two of a selection. A list that misses a visible cell (1 in 97 of them
            // dropped, tried) differs by ~40% of the sparse-vs-dense gap; the bound is 10% of it. (The op's tests
            // check bitwise that a list of every visible cell equals no list.)
            const double gap = max_rel_diff(per, dense_s);
            if (bitwise) {
                CHECK(uni == per, "%s: the unified cache differs from per-stream caches by %g (sparse vs dense %g)", mode, d, gap);
            } else {
                CHECK(d <= std::max(1e-4, 0.1*gap), "%s: the unified cache differs from per-stream caches by %g (dense: %g, sparse vs dense %g)",
                      mode, d, d_dense, gap);
            }
            // no cell, code or list of sequence 1 reaches the others' selections: with other tokens in it, sequences 0
            // and 2 get bitwise the same logits (the unified cache, where their selects rank candidate lists)
            int64_t steps_b = -1;
            const std::vector<float> uni_b = run_multi(true, ap, &steps_b, nullptr, seqs_b);
            CHECK(seqs_02(uni_b) == seqs_02(uni), "%s: sequences 0 and 2 depend on sequence 1's tokens (max rel diff %g)", mode,
                  max_rel_diff(seqs_02(uni_b), seqs_02(uni)));
            CHECK(uni != dense_m, "%s: the sparse steps gave exactly the dense logits", mode);
        }
    }

    // ---- 4d. many streams: the step after new key thresholds rebuilds every stream's codes in its graph ----
    // (4 nodes per stream and coded layer: with 128 streams more than upstream's node budget of a small model;
    // the 16 sequences of an 8B model on the GPU aborted the same way before graph_max_nodes counted them)
    if (servable) {
        const int n_seq = 128, len = 24;
        std::vector<std::vector<llama_token>> seqs;
        for (int s = 0; s < n_seq; s++) {
            seqs.push_back(random_tokens(rng, len, R.n_vocab));
        }
        llama_adamas_params p0 = def; p0.budget = 16;
        llama_adamas_params p1 = p0; p1.thr_k = def.thr_k*1.25f; // other key codes: the stored ones go stale
        // prefill every sequence at p_fill, set p_step, then one decode token per sequence in one batch
        auto run_many = [&](const llama_adamas_params & p_fill, const llama_adamas_params & p_step, int64_t * bad) {
            llama_context * ctx = R.make(n_seq*32, n_seq, false, GGML_TYPE_F16, p_fill);
            llama_batch b = llama_batch_init(n_seq*len, 0, 1);
            for (int s = 0; s < n_seq; s++) {
                for (int i = 0; i < len; i++) {
                    const int j = s*len + i;
                    b.token[j] = seqs[s][i]; b.pos[j] = i; b.n_seq_id[j] = 1; b.seq_id[j][0] = s; b.logits[j] = i == len - 1;
                }
            }
            b.n_tokens = n_seq*len;
            REQUIRE(llama_decode(ctx, b) == 0, "prefill of %d sequences failed", n_seq);
            std::vector<llama_token> next(n_seq);
            for (int s = 0; s < n_seq; s++) {
                const float * l = llama_get_logits_ith(ctx, (s + 1)*len - 1);
                next[s] = (llama_token) (std::max_element(l, l + R.n_vocab) - l);
            }
            REQUIRE(llama_adamas_set(ctx, &p_step) == 0, "new thresholds refused");
            b.n_tokens = n_seq;
            for (int s = 0; s < n_seq; s++) {
                b.token[s] = next[s]; b.pos[s] = len; b.n_seq_id[s] = 1; b.seq_id[s][0] = s; b.logits[s] = 1;
            }
            REQUIRE(llama_decode(ctx, b) == 0, "%d-sequence decode after new thresholds failed", n_seq);
            std::vector<float> all;
            for (int s = 0; s < n_seq; s++) {
                const float * l = llama_get_logits_ith(ctx, s);
                all.insert(all.end(), l, l + R.n_vocab);
            }
            *bad = llama_adamas_verify_codes(ctx);
            CHECK(llama_adamas_n_sparse_steps(ctx) == 1, "%lld sparse steps, expected 1", (long long) llama_adamas_n_sparse_steps(ctx));
            llama_batch_free(b);
            llama_free(ctx);
            return all;
        };
        int64_t bad_re = -1, bad_ref = -1;
        const std::vector<float> rebuilt = run_many(p0, p1, &bad_re);
        const std::vector<float> direct  = run_many(p1, p1, &bad_ref); // the reference: coded at p1 when written
        printf("%d streams: codes rebuilt in the step's graph, %lld cells off; vs coded when written: max rel diff %.3g\n",
               n_seq, (long long) bad_re, max_rel_diff(rebuilt, direct));
        CHECK(bad_re == 0 && bad_ref == 0, "%lld / %lld cells whose codes differ from K's encoding", (long long) bad_re, (long long) bad_ref);
        CHECK(rebuilt == direct, "codes rebuilt from K give other logits than codes written with K (max rel diff %g)",
              max_rel_diff(rebuilt, direct));
    }

    // ---- 4e. the forced cells are the sequence's oldest and newest tokens ----
    // With budget = n_sink + n_recent and every layer sparse, a decode step attends exactly its sequence's n_sink
    // oldest and n_recent newest cells, so its logits are those of dense decoding over a cache from which every
    // other cell of that sequence was removed (seq_rm): the reference. Another sequence holds the first cells of
    // a unified cache (cell order is not position order), and gaps (seq_rm before decoding, at the start and in
    // the middle) move which positions are the oldest. One cell off (the window shifted by one) must be told apart.
    if (servable && llama_model_n_swa(R.model) == 0) {
        llama_adamas_params pf = def; pf.budget = 8; pf.n_sink = 4; pf.n_recent = 4; pf.n_dense = 0;
        llama_adamas_params pd = def; pd.budget = 0;
        const std::vector<llama_token> other = random_tokens(rng, 200, R.n_vocab);
        const llama_token t = prompt[7];
        // decodes t at n_prompt after the prompt, with [r0, r1) of sequence 0 removed first, and for the dense
        // reference every cell but the first 4 and the last 3 (t is the 4th newest) of what is left
        // causal = false: the decode step without the causal mask (the same visible cells for the newest token),
        // whose select rows are read cell by cell instead of walking the sequence's ordered positions
        auto step = [&](const llama_adamas_params & ap, std::vector<std::pair<int, int>> rm, int64_t * steps, bool causal = true) {
            llama_context * ctx = R.make(1024, 2, true, GGML_TYPE_F16, ap, false, nullptr, ap.budget > 0);
            R.eval(ctx, other, 0, 1, nullptr);
            R.eval(ctx, prompt, 0, 0, nullptr);
            for (auto [r0, r1] : rm) {
                REQUIRE(llama_memory_seq_rm(llama_get_memory(ctx), 0, r0, r1), "seq_rm [%d, %d) failed", r0, r1);
            }
            llama_set_causal_attn(ctx, causal);
            std::vector<float> l;
            R.eval(ctx, {t}, n_prompt, 0, &l);
            if (steps) *steps = llama_adamas_n_sparse_steps(ctx);
            llama_free(ctx);
            return l;
        };
        // the positions kept: sinks from the lowest left after `gaps`, recent ones n_prompt-3 .. n_prompt-1; `off`
        // moves one of them by one cell (1: the sinks start at the 2nd oldest; 2: the 4th newest, not the 2nd)
        auto keep_only = [&](std::vector<std::pair<int, int>> gaps, int off) {
            std::vector<int> left;
            for (int i = 0; i < n_prompt; i++) {
                bool gone = false;
                for (auto [r0, r1] : gaps) gone |= i >= r0 && i < r1;
                if (!gone) left.push_back(i);
            }
            const int n = (int) left.size();
            std::vector<std::pair<int, int>> rm = gaps;
            for (int k = 0; k < n; k++) {
                const bool sink = off == 1 ? k >= 1 && k < 5 : k < 4;
                const bool rec  = off == 2 ? k == n - 4 || k == n - 3 || k == n - 1 : k >= n - 3;
                if (!sink && !rec) rm.push_back({ left[k], left[k] + 1 });
            }
            return rm;
        };
        for (const auto & gaps : { std::vector<std::pair<int, int>>{}, { {0, 3}, {100, 150} } }) {
            const std::vector<float> ref   = step(pd, keep_only(gaps, 0), nullptr);
            const std::vector<float> off_1 = step(pd, keep_only(gaps, 1), nullptr);
            const std::vector<float> off_2 = step(pd, keep_only(gaps, 2), nullptr);
            for (bool causal : { true, false }) {
                int64_t steps = -1;
                const std::vector<float> sparse = step(pf, gaps, &steps, causal);
                const double d = max_rel_diff(sparse, ref);
                const double d_off = std::min(max_rel_diff(sparse, off_1), max_rel_diff(sparse, off_2));
                printf("forced cells (%zu gaps, %s): vs dense over them max rel diff %.3g, vs the window one cell off %.3g\n",
                       gaps.size(), causal ? "causal" : "non-causal", d, d_off);
                CHECK(steps == 1, "forced cells: %lld sparse steps, expected 1", (long long) steps);
                CHECK(d < 1e-3 && d*20 < d_off, "forced cells (%zu gaps, %s): not the 4 oldest and 4 newest (vs reference "
                      "%g, vs one off %g)", gaps.size(), causal ? "causal" : "non-causal", d, d_off);
            }
        }
    }

    // ---- 5-7. state save/load and context shift, F16 and quantized caches ----
    for (ggml_type type_kv : { GGML_TYPE_F16, GGML_TYPE_Q8_0, GGML_TYPE_Q4_0 }) {
        const char * tn = ggml_type_name(type_kv);
        llama_adamas_params p = def; p.budget = 32; p.n_sink = 2; p.n_recent = 8;

        // uninterrupted
        llama_context * a = R.make(1024, 1, true, type_kv, p, type_kv != GGML_TYPE_F16);
        if (!a) {
            printf("%s cache: not available for this head dim, skipped\n", tn);
            continue;
        }
        std::vector<float> last;
        R.eval(a, prompt, 0, 0, &last);
        std::vector<float> head = R.cont(a, last, n_prompt, 4);
        CHECK(llama_adamas_verify_codes(a) == 0, "%s: codes differ from K after decoding", tn);
        std::vector<uint8_t> state(llama_state_get_size(a));
        CHECK(llama_state_get_data(a, state.data(), state.size()) == state.size(), "%s: state save failed", tn);
        const std::vector<float> seed_a(head.end() - R.n_vocab, head.end());
        std::vector<float> tail_a = R.cont(a, seed_a, n_prompt + 4, 8);

        // loaded into a new context
        llama_context * b = R.make(1024, 1, true, type_kv, p);
        CHECK(llama_state_set_data(b, state.data(), state.size()) == state.size(), "%s: state load failed", tn);
        std::vector<float> tail_b = R.cont(b, seed_a, n_prompt + 4, 8);
        // bitwise, unless dense decoding itself is not bitwise across a reload (a sliding-window cache
        // reloads its cells in another order, so the SWA layers sum in another order)
        const bool dense_exact = [&] {
            llama_context * d = R.make(1024, 1, true, type_kv, def);
            std::vector<float> l;
            R.eval(d, prompt, 0, 0, &l);
            std::vector<uint8_t> st(llama_state_get_size(d));
            llama_state_get_data(d, st.data(), st.size());
            const std::vector<float> x = R.cont(d, l, n_prompt, 4);
            llama_context * e = R.make(1024, 1, true, type_kv, def);
            llama_state_set_data(e, st.data(), st.size());
            const std::vector<float> y = R.cont(e, l, n_prompt, 4);
            llama_free(d);
            llama_free(e);
            return x == y;
        }();
        // a sliding-window cache reloads its cells in another order: the sparse layers then attend over the
        // same cells in another order too, even where dense happens to come out bitwise (seen with 16 threads)
        if (dense_exact && llama_model_n_swa(R.model) == 0) {
            CHECK(tail_a == tail_b, "%s: after save/load the logits differ (max rel diff %g)", tn, max_rel_diff(tail_b, tail_a));
        } else {
            CHECK(max_rel_diff(tail_b, tail_a) < 1e-3, "%s: after save/load the logits differ by %g", tn, max_rel_diff(tail_b, tail_a));
        }
        CHECK(llama_adamas_verify_codes(b) == 0, "%s: codes differ from K after a state load", tn);
        llama_free(b);

        // context shift: drop positions [10, 110) and move the rest back; the keys are re-roped in place
        llama_memory_t mem = llama_get_memory(a);
        const int pos_end = n_prompt + 12;
        CHECK(llama_memory_seq_rm(mem, 0, 10, 110), "%s: seq_rm failed", tn);
        llama_memory_seq_add(mem, 0, 110, pos_end, -100);
        const std::vector<float> seed_s(tail_a.end() - R.n_vocab, tail_a.end());
        R.cont(a, seed_s, pos_end - 100, 6); // the shift (and the re-encode) happen at the first step
        CHECK(llama_adamas_verify_codes(a) == 0, "%s: codes differ from the shifted K", tn);
        if (servable) {
            CHECK(llama_adamas_n_sparse_steps(a) == 4 + 8 + 6, "%s: %lld sparse steps", tn, (long long) llama_adamas_n_sparse_steps(a));
        }
        llama_free(a);
    }

    // a budget set on a live context re-encodes what was decoded without codes
    {
        llama_context * ctx = R.make(1024, 1, true, GGML_TYPE_F16, def);
        std::vector<float> last;
        R.eval(ctx, prompt, 0, 0, &last);
        llama_adamas_params p = def; p.budget = 32;
        llama_adamas_set(ctx, &p);
        R.cont(ctx, last, n_prompt, 2);
        CHECK(llama_adamas_verify_codes(ctx) == 0, "codes differ from K after enabling Adamas on a live context");
        CHECK(llama_adamas_n_sparse_steps(ctx) == (servable ? 2 : 0), "%lld sparse steps after enabling", (long long) llama_adamas_n_sparse_steps(ctx));
        llama_free(ctx);
    }

    // ---- 8. within the budget the graph is upstream's; the step that outgrows it rebuilds the codes ----
    // A context that starts within the budget writes no codes (its steps are dense, bitwise); the first step past
    // the budget encodes every cell from K, so from there on the codes equal K's encoding and the steps are
    // sparse. Crossed by a decode step (one token), and by a batch that jumps past the budget.
    if (servable) {
        const int budget = 64, n0 = 40;
        const std::vector<llama_token> p0(prompt.begin(), prompt.begin() + n0);
        llama_adamas_params p = def; p.budget = budget;

        // decode steps 41 .. 80: dense up to 64 cells, then sparse
        llama_context * ctx = R.make(1024, 1, true, GGML_TYPE_F16, p);
        llama_context * ref = R.make(1024, 1, true, GGML_TYPE_F16, def);
        std::vector<float> l, lr;
        R.eval(ctx, p0, 0, 0, &l);
        R.eval(ref, p0, 0, 0, &lr);
        const int n_within = budget - n0; // steps after which the cache holds exactly the budget
        const std::vector<float> a = R.cont(ctx, l, n0, n_within);
        const std::vector<float> b = R.cont(ref, lr, n0, n_within);
        CHECK(a == b, "within the budget the logits differ from dense (max rel diff %g)", max_rel_diff(a, b));
        CHECK(llama_adamas_n_sparse_steps(ctx) == 0, "%lld sparse steps within the budget", (long long) llama_adamas_n_sparse_steps(ctx));
        // the crossing step, once with the codes it rebuilt itself and once, after one more step and the removal of
        // both, with codes that were already there: the same logits, bitwise
        const std::vector<float> seed(a.end() - R.n_vocab, a.end());
        const std::vector<float> first = R.cont(ctx, seed, budget, 1);
        R.cont(ctx, first, budget + 1, 1);
        CHECK(llama_memory_seq_rm(llama_get_memory(ctx), 0, budget, -1), "seq_rm failed");
        const std::vector<float> again = R.cont(ctx, seed, budget, 1);
        CHECK(again == first, "the step that crossed the budget differs from its repetition (max rel diff %g)", max_rel_diff(again, first));
        R.cont(ctx, again, budget + 1, 2);
        CHECK(llama_adamas_n_sparse_steps(ctx) == 5, "%lld sparse steps after crossing the budget, expected 5", (long long) llama_adamas_n_sparse_steps(ctx));
        CHECK(llama_adamas_verify_codes(ctx) == 0, "codes differ from K after a decode step crossed the budget");
        llama_free(ref);

        // the same cache decoded again from the start by a batch that crosses the budget (prefill, dense), then
        // one decode step: the codes of the dropped and rewritten cells are rebuilt too
        llama_memory_clear(llama_get_memory(ctx), true);
        R.eval(ctx, p0, 0, 0, nullptr);
        CHECK(llama_adamas_verify_codes(ctx) == 0, "verify_codes fails on a cache within the budget");
        l.clear();
        R.eval(ctx, std::vector<llama_token>(prompt.begin() + n0, prompt.begin() + 100), n0, 0, &l);
        CHECK(llama_adamas_verify_codes(ctx) == 0, "codes differ from K after a batch crossed the budget");
        R.cont(ctx, l, 100, 1);
        CHECK(llama_adamas_n_sparse_steps(ctx) == 6, "%lld sparse steps, expected 6", (long long) llama_adamas_n_sparse_steps(ctx));
        CHECK(llama_adamas_verify_codes(ctx) == 0, "codes differ from K after a batch and a step past the budget");
        llama_free(ctx);
    }

    llama_model_free(model);
    llama_backend_free();
    if (n_fail) {
        fprintf(stderr, "%d checks failed\n", n_fail);
        return 1;
    }
    printf("ok\n");
    return 0;
}
