// probe for case 4c of test-adamas-decode on a real model (scratch, not a test)
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

static llama_context * make(int n_ctx, int n_seq, bool unified, const llama_adamas_params & ap) {
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n_ctx; cp.n_batch = n_ctx; cp.n_ubatch = 512; cp.n_seq_max = n_seq; cp.kv_unified = unified;
    cp.type_k = GGML_TYPE_F16; cp.type_v = GGML_TYPE_F16; cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_ENABLED;
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
static double rel(const std::vector<float> & a, const std::vector<float> & b) {
    double m = 0, s = 1e-30;
    for (size_t i = 0; i < a.size(); i++) { m = std::max(m, (double) std::fabs(a[i] - b[i])); s = std::max(s, (double) std::fabs(b[i])); }
    return m/s;
}
static std::vector<llama_token> rtoks(std::mt19937 & rng, int n) {
    std::uniform_int_distribution<int> d(3, n_vocab - 1);
    std::vector<llama_token> t(n); for (auto & x : t) x = d(rng); return t;
}

const int n_seq = 3, n_steps = 5;
const int lens[n_seq] = { 150, 420, 260 };

// prefill (whole, or token by token with budget 0 then set), then n_steps of teacher-forced tokens feed[s][i];
// only = -1: all sequences per step in one batch; else only that sequence decodes. returns per (step, seq) logits
static std::vector<std::vector<float>> run4c(bool unified, const llama_adamas_params & ap, bool tbt,
        const std::vector<std::vector<llama_token>> & seqs, const std::vector<std::vector<llama_token>> & feed, int only, int64_t * st) {
    llama_adamas_params p0 = llama_adamas_default_params();
    llama_context * ctx = make(1536, n_seq, unified, ap); (void) p0;
    for (int s = 0; s < n_seq; s++) {
        if (tbt) {
            for (int i0 = 0; i0 < lens[s]; i0 += 32) {
                std::vector<tok> ts;
                for (int i = i0; i < std::min(lens[s], i0 + 32); i++) ts.push_back({s, i, seqs[s][i], false});
                run(ctx, ts);
            }
        } else {
            std::vector<tok> ts;
            for (int i = 0; i < lens[s]; i++) ts.push_back({s, i, seqs[s][i], i + 1 == lens[s]});
            run(ctx, ts);
        }
    }
    
    std::vector<std::vector<float>> all;
    for (int i = 0; i < n_steps; i++) {
        std::vector<tok> ts;
        for (int s = 0; s < n_seq; s++) if (only < 0 || only == s) ts.push_back({s, lens[s] + i, feed[s][i], true});
        auto r = run(ctx, ts);
        for (auto & x : r) all.push_back(x);
    }
    *st = llama_adamas_n_sparse_steps(ctx);
    llama_free(ctx);
    return all;
}
static double relv(const std::vector<std::vector<float>> & a, const std::vector<std::vector<float>> & b) {
    double m = 0; for (size_t i = 0; i < a.size(); i++) m = std::max(m, rel(a[i], b[i])); return m;
}
static bool eqv(const std::vector<std::vector<float>> & a, const std::vector<std::vector<float>> & b) { return a == b; }

int main(int argc, char ** argv) {
    llama_log_set(quiet_log, nullptr);
    llama_backend_init();
    model = llama_model_load_from_file(argv[1], llama_model_default_params());
    n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    std::mt19937 rng(99);
    std::vector<std::vector<llama_token>> seqs, feed, seqs2;
    for (int s = 0; s < n_seq; s++) { seqs.push_back(rtoks(rng, lens[s])); feed.push_back(rtoks(rng, n_steps)); }
    seqs2 = seqs; seqs2[1] = rtoks(rng, lens[1]); // another partner for sequences 0 and 2
    llama_adamas_params def = llama_adamas_default_params();
    llama_adamas_params pc = def; pc.budget = 32; pc.n_sink = 2; pc.n_recent = 4;
    llama_adamas_params pe = def; pe.budget = 32; pe.select_mode = LLAMA_ADAMAS_SELECT_EXACT;
    const int tbt_mode = argc > 2 ? atoi(argv[2]) : 2;
    for (int tbt = 0; tbt < 2; tbt++) {
        if (tbt_mode != 2 && tbt != tbt_mode) continue;
        int64_t st;
        auto du = run4c(true, def, tbt, seqs, feed, -1, &st);
        auto ds = run4c(false, def, tbt, seqs, feed, -1, &st);
        printf("prefill %s: dense unified vs per-stream %.3g%s\n", tbt ? "chunks of 32" : "whole", relv(du, ds), eqv(du, ds) ? " (bitwise)" : "");
        for (const auto & ap : { def, pc, pe }) {
            const char * mode = ap.budget == 0 ? "dense" : ap.select_mode == LLAMA_ADAMAS_SELECT_EXACT ? "exact" : "codes";
            int64_t su, ss;
            auto u = run4c(true, ap, tbt, seqs, feed, -1, &su);
            auto s = run4c(false, ap, tbt, seqs, feed, -1, &ss);
            printf("  %s: sparse %lld/%lld; unified vs per-stream %.3g%s; vs dense %.3g\n", mode, (long long) su, (long long) ss,
                   relv(u, s), eqv(u, s) ? " (bitwise)" : "", relv(u, du));
            // partner independence: seq 1 replaced
            auto u2 = run4c(true, ap, tbt, seqs2, feed, -1, &su);
            double m = 0; bool eq = true;
            for (int i = 0; i < n_steps; i++) for (int q : {0, 2}) { m = std::max(m, rel(u[i*3 + q], u2[i*3 + q])); eq &= u[i*3 + q] == u2[i*3 + q]; }
            printf("    unified: seqs 0, 2 with another seq 1: %.3g%s\n", m, eq ? " (bitwise)" : "");
            auto s2 = run4c(false, ap, tbt, seqs2, feed, -1, &su);
            m = 0; eq = true;
            for (int i = 0; i < n_steps; i++) for (int q : {0, 2}) { m = std::max(m, rel(s[i*3 + q], s2[i*3 + q])); eq &= s[i*3 + q] == s2[i*3 + q]; }
            printf("    per-stream: seqs 0, 2 with another seq 1: %.3g%s\n", m, eq ? " (bitwise)" : "");
            // alone vs batched
            for (int q = 0; q < n_seq; q++) {
                auto a = run4c(true, ap, tbt, seqs, feed, q, &su);
                auto b = run4c(false, ap, tbt, seqs, feed, q, &ss);
                double mu = 0, ms = 0; bool equ = true, eqs = true;
                for (int i = 0; i < n_steps; i++) {
                    mu = std::max(mu, rel(a[i], u[i*3 + q])); equ &= a[i] == u[i*3 + q];
                    ms = std::max(ms, rel(b[i], s[i*3 + q])); eqs &= b[i] == s[i*3 + q];
                }
                printf("    seq %d alone vs batched: unified %.3g%s, per-stream %.3g%s; per step unified:", q, mu, equ ? " (bitwise)" : "", ms, eqs ? " (bitwise)" : "");
                for (int i = 0; i < n_steps; i++) printf(" %.2e", rel(a[i], u[i*3 + q]));
                printf("; per-stream:");
                for (int i = 0; i < n_steps; i++) printf(" %.2e", rel(b[i], s[i*3 + q]));
                printf("\n");
            }
        }
    }
    llama_model_free(model);
    return 0;
}
