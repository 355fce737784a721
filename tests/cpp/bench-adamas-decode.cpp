// Benchmark (not a test): end-to-end decode speed of a model at given context depths, dense (budget 0, which
// is upstream llama.cpp's graph unchanged) against Adamas budgets, measured the way llama-bench measures
// tg at depth (-d): the context is filled with `depth` random tokens in batches of n_batch/n_ubatch, then
// `n_gen` single-token decodes are timed (one synchronisation at the end), repeated `reps` times.
// The rounds interleave the budgets, and the decoded tokens are removed between rounds (seq_rm), so every
// round starts from the same cache. CUDA graph messages (ggml's debug log) are counted to show that graphs
// are captured and replayed with Adamas on.
//
// usage: bench-adamas-decode -m MODEL [-d 8192,32768] [-b 0,64,256] [-n 64] [-r 3] [-ngl 99] [--select group|head]
//        [--rerank 1,4]
// (the other Adamas parameters are the library defaults; --select and --rerank default to the library's too;
// every budget > 0 runs with every --rerank value)
#include "llama.h"
#include "llama-adamas.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

static std::map<std::string, int> g_graph_msgs;
static bool g_counting = false;

static void log_cb(ggml_log_level level, const char * text, void *) {
    const std::string t = text;
    for (const char * key : { "CUDA graph warmup complete", "CUDA graph warmup reset", "CUDA Graph id", "disabling CUDA graphs" }) {
        if (g_counting && t.find(key) != std::string::npos) {
            g_graph_msgs[key]++;
        }
    }
    if (level >= GGML_LOG_LEVEL_WARN || t.find("Adamas") != std::string::npos) {
        fputs(text, stderr);
    }
}

static std::vector<long> parse_list(const char * s) {
    std::vector<long> v;
    for (const char * p = s; *p; ) {
        char * e = nullptr;
        v.push_back(strtol(p, &e, 10));
        if (e == p) { fprintf(stderr, "bad list: %s\n", s); exit(2); }
        p = *e == ',' ? e + 1 : e;
    }
    return v;
}

static bool decode_tokens(llama_context * ctx, const std::vector<llama_token> & toks, int pos0, bool last_logits) {
    llama_batch b = llama_batch_init((int) toks.size(), 0, 1);
    for (size_t i = 0; i < toks.size(); i++) {
        b.token[i] = toks[i]; b.pos[i] = pos0 + (int) i; b.n_seq_id[i] = 1; b.seq_id[i][0] = 0;
        b.logits[i] = last_logits && i + 1 == toks.size();
    }
    b.n_tokens = (int) toks.size();
    const int rc = llama_decode(ctx, b);
    llama_batch_free(b);
    return rc == 0;
}

int main(int argc, char ** argv) {
    std::string model;
    std::vector<long> depths = { 8192, 32768 }, budgets = { 0, 64, 256 };
    int n_gen = 64, reps = 3, ngl = 99, n_batch = 2048, n_ubatch = 512;
    int select = llama_adamas_default_params().select_mode; // the library's default unless --select says
    std::vector<long> reranks = { llama_adamas_default_params().rerank };
    for (int i = 1; i < argc; i++) {
        const std::string a = argv[i];
        auto next = [&]() { if (i + 1 >= argc) { fprintf(stderr, "%s needs a value\n", a.c_str()); exit(2); } return argv[++i]; };
        if (a == "-m") model = next();
        else if (a == "-d") depths = parse_list(next());
        else if (a == "-b") budgets = parse_list(next());
        else if (a == "-n") n_gen = atoi(next());
        else if (a == "-r") reps = atoi(next());
        else if (a == "-ngl") ngl = atoi(next());
        else if (a == "--select") select = std::string(next()) == "head" ? LLAMA_ADAMAS_SELECT_HEAD : LLAMA_ADAMAS_SELECT_GROUP;
        else if (a == "--rerank") reranks = parse_list(next());
        else { fprintf(stderr, "usage: %s -m MODEL [-d 8192,32768] [-b 0,64,256] [-n 64] [-r 3] [-ngl 99] [--select group|head] [--rerank 1,4]\n", argv[0]); return 2; }
    }
    if (model.empty() || n_gen <= 0 || reps <= 0) { fprintf(stderr, "-m MODEL is required; -n and -r must be > 0\n"); return 2; }
    for (long r : reranks) {
        if (r < 1) { fprintf(stderr, "--rerank values must be >= 1\n"); return 2; }
    }
    // the settings timed: (budget, rerank), dense once
    std::vector<std::pair<long, long>> cfgs;
    for (long b : budgets) {
        if (b == 0) {
            cfgs.emplace_back(0, reranks[0]);
        } else {
            for (long r : reranks) cfgs.emplace_back(b, r);
        }
    }

    llama_log_set(log_cb, nullptr);
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = ngl;
    llama_model * mdl = llama_model_load_from_file(model.c_str(), mp);
    if (!mdl) { fprintf(stderr, "cannot load %s\n", model.c_str()); return 1; }
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(mdl));

    // codes are written during the prefill at the largest budget; a dense round writes K without codes, and the
    // untimed warm-up of the next sparse round rebuilds them
    long b_max = 0;
    for (long b : budgets) b_max = std::max(b_max, b);

    printf("select mode: %s\n", select == LLAMA_ADAMAS_SELECT_HEAD ? "head" : "group");
    printf("| model | depth | budget | rerank | t/s (tg%d) | sd | ratio vs dense | sparse steps |\n|---|---:|---:|---:|---:|---:|---:|---:|\n", n_gen);
    std::mt19937 rng(42);
    for (long depth : depths) {
        llama_context_params cp = llama_context_default_params();
        cp.n_ctx = (uint32_t) ((depth + n_gen + 4 + 255)/256*256);
        cp.n_batch = n_batch;
        cp.n_ubatch = n_ubatch;
        cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_ENABLED;
        cp.n_seq_max = 1;
        cp.no_perf = true;
        llama_context * ctx = llama_init_from_model(mdl, cp);
        if (!ctx) { fprintf(stderr, "cannot create a context of %u\n", cp.n_ctx); return 1; }

        llama_adamas_params ap = llama_adamas_default_params();
        ap.select_mode = select;
        ap.budget = (int32_t) b_max;
        ap.rerank = (int32_t) reranks[0];
        llama_adamas_set(ctx, &ap);

        std::vector<llama_token> toks(depth);
        for (auto & t : toks) t = (llama_token) (rng() % n_vocab);
        const auto tp0 = std::chrono::steady_clock::now();
        for (long p = 0; p < depth; p += n_batch) {
            std::vector<llama_token> chunk(toks.begin() + p, toks.begin() + std::min<long>(depth, p + n_batch));
            if (!decode_tokens(ctx, chunk, (int) p, p + n_batch >= depth)) { fprintf(stderr, "prefill failed\n"); return 1; }
        }
        llama_synchronize(ctx);
        const double pp_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - tp0).count();
        fprintf(stderr, "depth %ld: prefill %.1f s (%.0f t/s)\n", depth, pp_s, depth/pp_s);

        auto order = cfgs;
        std::stable_sort(order.begin(), order.end(), [](const auto & x, const auto & y) { return (x.first > 0) > (y.first > 0); });
        std::map<std::pair<long, long>, std::vector<double>> tps;
        std::map<std::pair<long, long>, long> steps;
        for (int r = 0; r < reps; r++) {
            for (const auto & cfg : order) {
                const long b = cfg.first;
                ap.budget = (int32_t) b;
                ap.rerank = (int32_t) cfg.second;
                llama_adamas_set(ctx, &ap);
                // warm-up tokens (graph reserve, CUDA graph capture) are decoded and removed, untimed
                for (int w = 0; w < 3; w++) decode_tokens(ctx, { (llama_token) (rng() % n_vocab) }, (int) depth + w, true);
                llama_synchronize(ctx);
                llama_memory_seq_rm(llama_get_memory(ctx), 0, (llama_pos) depth, -1);
                const long s0 = llama_adamas_n_sparse_steps(ctx);
                g_counting = b > 0;
                const auto t0 = std::chrono::steady_clock::now();
                for (int i = 0; i < n_gen; i++) {
                    if (!decode_tokens(ctx, { (llama_token) (rng() % n_vocab) }, (int) depth + i, true)) { fprintf(stderr, "decode failed\n"); return 1; }
                }
                llama_synchronize(ctx);
                const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                g_counting = false;
                steps[cfg] += llama_adamas_n_sparse_steps(ctx) - s0;
                tps[cfg].push_back(n_gen/s);
                llama_memory_seq_rm(llama_get_memory(ctx), 0, (llama_pos) depth, -1);
            }
        }
        auto mean_sd = [](const std::vector<double> & v, double & m, double & sd) {
            m = 0; for (double x : v) m += x; m /= v.size();
            sd = 0; for (double x : v) sd += (x - m)*(x - m); sd = v.size() > 1 ? std::sqrt(sd/(v.size() - 1)) : 0.0;
        };
        double dense = 0, sd0 = 0;
        for (const auto & kv : tps) {
            if (kv.first.first == 0) mean_sd(kv.second, dense, sd0);
        }
        char name[256];
        snprintf(name, sizeof(name), "%s", model.substr(model.find_last_of('/') + 1).c_str());
        for (const auto & cfg : cfgs) {
            const long b = cfg.first;
            double m, sd; mean_sd(tps[cfg], m, sd);
            printf("| %s | %ld | %ld | %s | %.2f | %.2f | %s | %ld |\n", name, depth, b, b > 0 ? std::to_string(cfg.second).c_str() : "",
                   m, sd, b > 0 && dense > 0 ? (std::to_string(m/dense).substr(0, 5) + "x").c_str() : "", steps[cfg]);
        }
        fflush(stdout);
        const char * why = llama_adamas_unavailable_reason(ctx);
        if (why) fprintf(stderr, "Adamas unavailable: %s\n", why);
        llama_free(ctx);
    }
    printf("CUDA graph messages while Adamas decoded:");
    for (auto & kv : g_graph_msgs) printf(" [%s] x%d", kv.first.c_str(), kv.second);
    printf("\n");
    llama_model_free(mdl);
    return 0;
}
