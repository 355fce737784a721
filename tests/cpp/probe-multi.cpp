// probe for case 4 of test-adamas-decode on a real model (scratch, not a test)
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

static void quiet_log(ggml_log_level level, const char * text, void *) {
    if (level >= GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

static llama_model * model;
static int n_vocab;

static bool g_fa = true;
static llama_context * make(int n_ctx, int n_seq, bool unified, ggml_type t, const llama_adamas_params & ap) {
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n_ctx; cp.n_batch = n_ctx; cp.n_ubatch = 512; cp.n_seq_max = n_seq; cp.kv_unified = unified;
    cp.type_k = t; cp.type_v = t; cp.flash_attn_type = g_fa ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.n_threads = cp.n_threads_batch = 2;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx || llama_adamas_set(ctx, &ap) != 0) { fprintf(stderr, "ctx\n"); exit(1); }
    return ctx;
}

struct tok { int seq, pos; llama_token t; bool out; };
static std::vector<std::vector<float>> run(llama_context * c, const std::vector<tok> & ts) {
    llama_batch b = llama_batch_init((int) ts.size(), 0, 1);
    for (size_t i = 0; i < ts.size(); i++) {
        b.token[i] = ts[i].t; b.pos[i] = ts[i].pos; b.n_seq_id[i] = 1; b.seq_id[i][0] = ts[i].seq; b.logits[i] = ts[i].out;
    }
    b.n_tokens = (int) ts.size();
    if (llama_decode(c, b) != 0) { fprintf(stderr, "decode\n"); exit(1); }
    std::vector<std::vector<float>> out;
    for (size_t i = 0; i < ts.size(); i++) if (ts[i].out) {
        const float * l = llama_get_logits_ith(c, (int) i);
        out.emplace_back(l, l + n_vocab);
    }
    llama_batch_free(b);
    return out;
}
static void prefill(llama_context * c, const std::vector<llama_token> & t, int seq) {
    std::vector<tok> ts;
    for (size_t i = 0; i < t.size(); i++) ts.push_back({seq, (int) i, t[i], i + 1 == t.size()});
    run(c, ts);
}
static double rel(const std::vector<float> & a, const std::vector<float> & b) {
    double m = 0, s = 1e-30;
    for (size_t i = 0; i < a.size(); i++) { m = std::max(m, (double) std::fabs(a[i] - b[i])); s = std::max(s, (double) std::fabs(b[i])); }
    return m/s;
}
static int amax(const std::vector<float> & l) { return (int) (std::max_element(l.begin(), l.end()) - l.begin()); }
static std::vector<llama_token> rtoks(std::mt19937 & rng, int n) {
    std::uniform_int_distribution<int> d(3, n_vocab - 1);
    std::vector<llama_token> t(n); for (auto & x : t) x = d(rng); return t;
}

// the short sequence (seq 1) decoded for n_steps with forced tokens `feed` (teacher forcing); mode:
//  0 = alone, 1 = batched with the long seq 0 (prefilled with `other`), 2 = alone but with seq 0 prefilled
static std::vector<std::vector<float>> short_run(bool unified, ggml_type t, const llama_adamas_params & p,
        const std::vector<llama_token> & other, const std::vector<llama_token> & shrt, const std::vector<llama_token> & feed, int mode,
        int64_t * steps) {
    llama_context * ctx = make(1024, 2, unified, t, p);
    if (mode != 0) prefill(ctx, other, 0);
    prefill(ctx, shrt, 1);
    std::vector<std::vector<float>> res;
    for (size_t i = 0; i < feed.size(); i++) {
        std::vector<tok> ts;
        if (mode == 1) ts.push_back({0, (int) other.size() + (int) i, other.back(), false});
        ts.push_back({1, (int) shrt.size() + (int) i, feed[i], true});
        res.push_back(run(ctx, ts)[0]);
    }
    *steps = llama_adamas_n_sparse_steps(ctx);
    llama_free(ctx);
    return res;
}

int main(int argc, char ** argv) {
    llama_log_set(quiet_log, nullptr);
    llama_backend_init();
    model = llama_model_load_from_file(argv[1], llama_model_default_params());
    n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    // the test's rng sequence: prompt (300), then case 4 unified draws `other` (400)
    std::mt19937 rng(1234);
    const std::vector<llama_token> prompt = rtoks(rng, 300);
    const std::vector<llama_token> other = rtoks(rng, 400);
    const std::vector<llama_token> shrt(prompt.begin(), prompt.begin() + 40);
    const int n_steps = 6;
    llama_adamas_params def = llama_adamas_default_params();

    // the test's free-running dense reference tokens
    std::vector<llama_token> feed;
    {
        llama_context * ref = make(1024, 2, true, GGML_TYPE_F16, def);
        std::vector<float> last;
        std::vector<tok> ts; for (int i = 0; i < 40; i++) ts.push_back({1, i, shrt[i], i == 39});
        last = run(ref, ts)[0];
        for (int i = 0; i < n_steps; i++) {
            feed.push_back(amax(last));
            last = run(ref, {{1, 40 + i, feed.back(), true}})[0];
        }
        llama_free(ref);
    }
    printf("dense greedy tokens:"); for (auto t : feed) printf(" %d", t); printf("\n");

    for (ggml_type t : { GGML_TYPE_F16, GGML_TYPE_F32 }) {
        for (bool unified : { true, false }) {
            printf("== %s cache, %s ==\n", ggml_type_name(t), unified ? "unified" : "per-stream");
            int64_t st;
            const auto dense = short_run(unified, t, def, other, shrt, feed, 1, &st);
            g_fa = false;
            const auto nofa = short_run(unified, t, def, other, shrt, feed, 1, &st);
            g_fa = true;
            printf("%-42s vs dense-batched per step:", "dense, flash attn off, batched");
            for (int i = 0; i < n_steps; i++) printf(" %.2e%s", rel(nofa[i], dense[i]), amax(nofa[i]) == amax(dense[i]) ? "" : "*");
            printf("\n");
            struct cfg { const char * name; llama_adamas_params p; int mode; };
            llama_adamas_params b64 = def; b64.budget = 64;
            llama_adamas_params big = def; big.budget = 2048;
            llama_adamas_params ex = b64; ex.select_mode = LLAMA_ADAMAS_SELECT_EXACT;
            llama_adamas_params sr = b64; sr.n_sink = 2; sr.n_recent = 4;
            const cfg cfgs[] = {
                {"dense, short alone", def, 0},
                {"dense, short alone, long prefilled", def, 2},
                {"budget 2048, batched", big, 1},
                {"budget 64, batched", b64, 1},
                {"budget 64, short alone, long prefilled", b64, 2},
                {"budget 64, short alone", b64, 0},
                {"budget 64 exact, batched", ex, 1},
                {"budget 64 sinks 2 recent 4, batched", sr, 1},
            };
            std::vector<std::vector<std::vector<float>>> rs;
            for (const auto & c : cfgs) {
                rs.push_back(short_run(unified, t, c.p, other, shrt, feed, c.mode, &st));
                printf("%-42s sparse steps %lld; vs dense-batched per step:", c.name, (long long) st);
                for (int i = 0; i < n_steps; i++) printf(" %.2e%s", rel(rs.back()[i], dense[i]), amax(rs.back()[i]) == amax(dense[i]) ? "" : "*");
                printf("\n");
            }
            printf("budget 64 batched vs alone-with-long-prefilled:");
            for (int i = 0; i < n_steps; i++) printf(" %.2e%s", rel(rs[3][i], rs[4][i]), rs[3][i] == rs[4][i] ? "(=)" : "");
            printf("\nbudget 64 batched vs exact batched:");
            for (int i = 0; i < n_steps; i++) printf(" %.2e%s", rel(rs[3][i], rs[6][i]), rs[3][i] == rs[6][i] ? "(=)" : "");
            printf("\n");
            // top-2 gap of the dense logits per step
            printf("dense top1-top2 gap:");
            for (int i = 0; i < n_steps; i++) {
                auto l = dense[i]; std::partial_sort(l.begin(), l.begin() + 2, l.end(), std::greater<float>());
                printf(" %.3g", l[0] - l[1]);
            }
            printf("\n");
        }
    }
    llama_model_free(model);
    return 0;
}
