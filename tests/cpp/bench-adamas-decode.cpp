// Benchmark (not a test): end-to-end decode speed of a model at given context depths, dense (budget 0, which
// is upstream llama.cpp's graph unchanged) against Adamas budgets, measured the way llama-bench measures
// tg at depth (-d): the context is filled with `depth` random tokens in batches of n_batch/n_ubatch, then
// `n_gen` single-token decodes are timed (one synchronisation at the end), repeated `reps` times.
// The rounds interleave the budgets, and the decoded tokens are removed between rounds (seq_rm), so every
// round starts from the same cache. CUDA graph messages (ggml's debug log) are counted to show that graphs
// are captured and replayed with Adamas on.
//
// Several users at once: with -np N, N sequences are each prefilled to the depth and decode together, one token
// each per step (the way llama-server's slots decode); t/s is then the aggregate over the N sequences. -kvu
// puts them in one unified KV cache (upstream's kv_unified) instead of one cache stream per sequence.
// --mixed P: the last P of the N sequences prefill while the others decode: each step carries one token of
// every decoding sequence and a --chunk C prompt chunk of every prefilling one (llama-server's batching under
// mixed load); t/s counts the decoded tokens only, the prefilling sequences start empty in every round.
//
// --rpc HOST:PORT[,HOST:PORT...]: the model's layers go on these rpc-servers' devices only (a build with GGML_RPC,
// ADAMAS_BUILD_RPC), the way test-backend-ops --rpc reaches them (the RPC registry's ggml_backend_rpc_add_server,
// looked up at run time), so that the per-token cost of RPC shows against the same device used locally; the
// servers' devices are the model's whole device list (llama_model_params.devices): no local GPU takes layers.
//
// -ng 1,2: the whole run once per value, the model on the first N devices (local GPUs, or with --rpc the servers'
// devices), its layers split evenly by layer (-sm layer, tensor_split 1,...,1): one against two GPUs in one run; the
// model column says "[N dev]". Without -ng llama.cpp's own choice (every GPU, split by free memory).
//
// usage: bench-adamas-decode -m MODEL [-d 8192,32768] [-b 0,64,256] [-n 64] [-r 3] [-ngl 99] [--select group|head]
//        [--rerank 1,4] [--recent 0,16,-1] [-np 1,4] [-kvu] [--mixed P] [--chunk 32] [-t N] [--rpc HOST:PORT[,...]]
//        [-ng 1,2]
// -t: CPU threads for decode and prefill (both n_threads and n_threads_batch; default: llama's, 4)
// (the other Adamas parameters are the library defaults; --select, --rerank and --recent default to the library's too;
// every budget > 0 runs with every --rerank and --recent value, every depth with every -np value)
#include "llama.h"
#include "llama-adamas.h"
#include "adamas-rpc-servers.h" // ggml_adamas/tests

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <tuple>
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

// --rpc: every device of each server, in the order given (null-terminated, for llama_model_params.devices), and
// their names for the report; false with a message if this ggml has no RPC backend or a server has no devices
static bool rpc_devices(const std::string & servers, std::vector<ggml_backend_dev_t> & devs, std::string & names) {
    std::vector<ggml_backend_reg_t> regs;
    if (!adamas_rpc_server_regs(servers, regs)) {
        return false;
    }
    for (ggml_backend_reg_t reg : regs) {
        for (size_t i = 0; i < ggml_backend_reg_dev_count(reg); i++) {
            ggml_backend_dev_t d = ggml_backend_reg_dev_get(reg, i);
            devs.push_back(d);
            names += (names.empty() ? "" : ", ") + std::string(ggml_backend_dev_name(d)) + " (" + ggml_backend_dev_description(d) + ")";
        }
    }
    devs.push_back(nullptr);
    return true;
}

static bool decode_tokens(llama_context * ctx, const std::vector<llama_token> & toks, int pos0, bool last_logits, llama_seq_id seq = 0) {
    llama_batch b = llama_batch_init((int) toks.size(), 0, 1);
    for (size_t i = 0; i < toks.size(); i++) {
        b.token[i] = toks[i]; b.pos[i] = pos0 + (int) i; b.n_seq_id[i] = 1; b.seq_id[i][0] = seq;
        b.logits[i] = last_logits && i + 1 == toks.size();
    }
    b.n_tokens = (int) toks.size();
    const int rc = llama_decode(ctx, b);
    llama_batch_free(b);
    return rc == 0;
}

// One step of all sequences: a token of each of the n_dec decoding ones (sequences 0..n_dec-1, at pos_dec),
// and `chunk` prompt tokens of each prefilling one (sequences n_dec.., at pos_pre). The logits of every
// decode token and of each chunk's last token are asked for, as llama-server does.
static bool decode_step(llama_context * ctx, std::mt19937 & rng, int n_vocab, int n_dec, int pos_dec, int n_pre, int pos_pre, int chunk) {
    llama_batch b = llama_batch_init(n_dec + n_pre*chunk, 0, 1);
    int n = 0;
    auto add = [&](llama_seq_id s, int pos, bool logits) {
        b.token[n] = (llama_token) (rng() % n_vocab); b.pos[n] = pos; b.n_seq_id[n] = 1; b.seq_id[n][0] = s; b.logits[n] = logits;
        n++;
    };
    for (int s = 0; s < n_dec; s++) add(s, pos_dec, true);
    for (int s = 0; s < n_pre; s++) {
        for (int i = 0; i < chunk; i++) add(n_dec + s, pos_pre + i, i + 1 == chunk);
    }
    b.n_tokens = n;
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
    std::vector<long> recents = { llama_adamas_default_params().n_recent };
    std::vector<long> nps = { 1 };
    bool kvu = false;
    int n_mixed = 0, chunk = 32;
    int n_threads = 0; // 0: llama's default
    std::string rpc_servers; // --rpc: the model on these servers' devices
    std::vector<long> ngs = { 0 }; // -ng: the model on the first N devices (0: llama.cpp's choice)
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
        else if (a == "--recent") recents = parse_list(next());
        else if (a == "-np") nps = parse_list(next());
        else if (a == "-kvu") kvu = true;
        else if (a == "--mixed") n_mixed = atoi(next());
        else if (a == "--chunk") chunk = atoi(next());
        else if (a == "-t") n_threads = atoi(next());
        else if (a == "--rpc") rpc_servers = next();
        else if (a == "-ng") ngs = parse_list(next());
        else { fprintf(stderr, "usage: %s -m MODEL [-d 8192,32768] [-b 0,64,256] [-n 64] [-r 3] [-ngl 99] [--select group|head] [--rerank 1,4] [--recent 0,16,-1] [-np 1,4] [-kvu] [--mixed P] [--chunk 32] [-t N] [--rpc HOST:PORT[,...]] [-ng 1,2]\n", argv[0]); return 2; }
    }
    if (model.empty() || n_gen <= 0 || reps <= 0) { fprintf(stderr, "-m MODEL is required; -n and -r must be > 0\n"); return 2; }
    for (long np : nps) {
        if (np < 1 || np > 256) { fprintf(stderr, "-np values must be from 1 to 256\n"); return 2; }
        if (n_mixed < 0 || n_mixed >= np) { fprintf(stderr, "--mixed P needs 0 <= P < every -np value (some sequences must decode)\n"); return 2; }
    }
    if (chunk < 1) { fprintf(stderr, "--chunk must be >= 1\n"); return 2; }
    for (long ng : ngs) {
        if (ng < 0 || ng > (long) llama_max_devices()) { fprintf(stderr, "-ng values must be from 0 to %zu\n", llama_max_devices()); return 2; }
    }
    for (long r : reranks) {
        if (r < 1) { fprintf(stderr, "--rerank values must be >= 1\n"); return 2; }
    }
    for (long r : recents) {
        if (r < LLAMA_ADAMAS_RECENT_AUTO) { fprintf(stderr, "--recent values must be >= 0, or -1 (auto)\n"); return 2; }
    }
    // the settings timed: (budget, rerank, recent), dense once
    using cfg_t = std::tuple<long, long, long>;
    std::vector<cfg_t> cfgs;
    for (long b : budgets) {
        if (b == 0) {
            cfgs.emplace_back(0, reranks[0], recents[0]);
        } else {
            for (long r : reranks) for (long n : recents) cfgs.emplace_back(b, r, n);
        }
    }

    llama_log_set(log_cb, nullptr);
    llama_backend_init();
    std::vector<ggml_backend_dev_t> devs;
    std::string dev_names;
    if (!rpc_servers.empty()) {
        if (!rpc_devices(rpc_servers, devs, dev_names)) return 1;
    } else {
        for (size_t i = 0; i < ggml_backend_dev_count(); i++) {
            ggml_backend_dev_t d = ggml_backend_dev_get(i);
            if (ggml_backend_dev_type(d) == GGML_BACKEND_DEVICE_TYPE_GPU) devs.push_back(d);
        }
        devs.push_back(nullptr);
    }
    const size_t n_devs = devs.size() - 1;
    for (long ng : ngs) {
        if ((size_t) ng > n_devs) { fprintf(stderr, "-ng %ld: only %zu device(s) here\n", ng, n_devs); return 2; }
    }
    if (!dev_names.empty()) printf("model on the rpc-server devices %s: %s\n", rpc_servers.c_str(), dev_names.c_str());
    printf("threads: %d, select mode: %s, KV cache: %s%s\n", n_threads > 0 ? n_threads : (int) llama_context_default_params().n_threads, select == LLAMA_ADAMAS_SELECT_HEAD ? "head" : "group",
           kvu ? "unified" : "one stream per sequence",
           n_mixed ? (", mixed load: " + std::to_string(n_mixed) + " sequence(s) prefill " + std::to_string(chunk) +
                      "-token chunks while the others decode (t/s: decoded tokens)").c_str() : "");
    printf("| model | depth | seqs x depth | budget | rerank | t/s (tg%d) | sd | ratio vs dense | sparse steps |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n", n_gen);
    std::mt19937 rng(42);
    // codes are written during the prefill at the largest budget; a dense round writes K without codes, and the
    // untimed warm-up of the next sparse round rebuilds them
    long b_max = 0;
    for (long b : budgets) b_max = std::max(b_max, b);
    for (long ng : ngs) {
        llama_model_params mp = llama_model_default_params();
        mp.n_gpu_layers = ngl;
        std::vector<ggml_backend_dev_t> use; // -ng: the first ng devices, null-terminated
        std::vector<float> split(llama_max_devices(), 0.0f);
        if (ng > 0) {
            use.assign(devs.begin(), devs.begin() + ng);
            use.push_back(nullptr);
            mp.devices = use.data();
            mp.split_mode = LLAMA_SPLIT_MODE_LAYER;
            std::fill(split.begin(), split.begin() + ng, 1.0f);
            mp.tensor_split = split.data();
        } else if (!rpc_servers.empty()) {
            mp.devices = devs.data();
        }
        llama_model * mdl = llama_model_load_from_file(model.c_str(), mp);
        if (!mdl) { fprintf(stderr, "cannot load %s\n", model.c_str()); return 1; }
        const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(mdl));

        for (long depth : depths) for (long np : nps) {
            const int n_dec = (int) np - n_mixed; // sequences that decode
            const int n_pre = n_mixed;            // sequences that prefill meanwhile
            // per sequence: the depth, the decoded tokens and warm-up, or the chunks a prefilling one gets
            const long n_seq_ctx = std::max<long>(depth + n_gen + 4, (long) (n_gen + 3)*chunk*(n_pre > 0));
            llama_context_params cp = llama_context_default_params();
            cp.n_ctx = (uint32_t) (np*((n_seq_ctx + 255)/256*256));
            cp.n_batch = std::max(n_batch, n_dec + n_pre*chunk);
            cp.n_ubatch = std::max(n_ubatch, n_dec + n_pre*chunk); // a step is one ubatch, as a decode step in llama-server
            cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_ENABLED;
            cp.n_seq_max = (uint32_t) np;
            cp.kv_unified = kvu;
            cp.no_perf = true;
            if (n_threads > 0) { cp.n_threads = n_threads; cp.n_threads_batch = n_threads; }
            llama_context * ctx = llama_init_from_model(mdl, cp);
            if (!ctx) { fprintf(stderr, "cannot create a context of %u\n", cp.n_ctx); return 1; }
            llama_memory_t mem = llama_get_memory(ctx);

            llama_adamas_params ap = llama_adamas_default_params();
            ap.select_mode = select;
            ap.budget = (int32_t) b_max;
            ap.rerank = (int32_t) reranks[0];
            ap.n_recent = (int32_t) recents[0];
            llama_adamas_set(ctx, &ap);

            // each decoding sequence gets its own random prompt (no shared prefix)
            const auto tp0 = std::chrono::steady_clock::now();
            for (int s = 0; s < n_dec; s++) {
                std::vector<llama_token> toks(depth);
                for (auto & t : toks) t = (llama_token) (rng() % n_vocab);
                for (long p = 0; p < depth; p += n_batch) {
                    std::vector<llama_token> part(toks.begin() + p, toks.begin() + std::min<long>(depth, p + n_batch));
                    if (!decode_tokens(ctx, part, (int) p, p + n_batch >= depth, s)) { fprintf(stderr, "prefill failed\n"); return 1; }
                }
            }
            llama_synchronize(ctx);
            const double pp_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - tp0).count();
            fprintf(stderr, "%d x depth %ld: prefill %.1f s (%.0f t/s)\n", n_dec, depth, pp_s, n_dec*depth/pp_s);
            // back to the prefilled cache: the decoded tokens of the decoding sequences, all of the prefilling ones
            auto reset = [&]() {
                for (int s = 0; s < n_dec; s++) llama_memory_seq_rm(mem, s, (llama_pos) depth, -1);
                for (int s = n_dec; s < (int) np; s++) llama_memory_seq_rm(mem, s, 0, -1);
            };

            auto order = cfgs;
            std::stable_sort(order.begin(), order.end(), [](const auto & x, const auto & y) { return (std::get<0>(x) > 0) > (std::get<0>(y) > 0); });
            std::map<cfg_t, std::vector<double>> tps;
            std::map<cfg_t, long> steps;
            for (int r = 0; r < reps; r++) {
                for (const auto & cfg : order) {
                    const long b = std::get<0>(cfg);
                    ap.budget = (int32_t) b;
                    ap.rerank = (int32_t) std::get<1>(cfg);
                    ap.n_recent = (int32_t) std::get<2>(cfg);
                    llama_adamas_set(ctx, &ap);
                    // warm-up tokens (graph reserve, CUDA graph capture) are decoded and removed, untimed
                    for (int w = 0; w < 3; w++) decode_step(ctx, rng, n_vocab, n_dec, (int) depth + w, n_pre, w*chunk, chunk);
                    llama_synchronize(ctx);
                    reset();
                    const long s0 = llama_adamas_n_sparse_steps(ctx);
                    g_counting = b > 0;
                    const auto t0 = std::chrono::steady_clock::now();
                    for (int i = 0; i < n_gen; i++) {
                        if (!decode_step(ctx, rng, n_vocab, n_dec, (int) depth + i, n_pre, i*chunk, chunk)) { fprintf(stderr, "decode failed\n"); return 1; }
                    }
                    llama_synchronize(ctx);
                    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                    g_counting = false;
                    steps[cfg] += llama_adamas_n_sparse_steps(ctx) - s0;
                    tps[cfg].push_back((double) n_dec*n_gen/s);
                    reset();
                }
            }
            auto mean_sd = [](const std::vector<double> & v, double & m, double & sd) {
                m = 0; for (double x : v) m += x; m /= v.size();
                sd = 0; for (double x : v) sd += (x - m)*(x - m); sd = v.size() > 1 ? std::sqrt(sd/(v.size() - 1)) : 0.0;
            };
            double dense = 0, sd0 = 0;
            for (const auto & kv : tps) {
                if (std::get<0>(kv.first) == 0) mean_sd(kv.second, dense, sd0);
            }
            char name[256];
            snprintf(name, sizeof(name), "%s%s", model.substr(model.find_last_of('/') + 1).c_str(),
                     ng > 0 ? (" [" + std::to_string(ng) + " dev]").c_str() : "");
            for (const auto & cfg : cfgs) {
                const long b = std::get<0>(cfg);
                double m, sd; mean_sd(tps[cfg], m, sd);
                // the rerank column names recent tokens too when some are kept (the table keeps its columns)
                const std::string sel = b > 0 ? std::to_string(std::get<1>(cfg)) + (std::get<2>(cfg) == LLAMA_ADAMAS_RECENT_AUTO ? std::string(", recent auto") : std::get<2>(cfg) > 0 ? ", recent " + std::to_string(std::get<2>(cfg)) : "") : "";
                const std::string load = std::to_string(n_dec) + " x " + std::to_string(depth) +
                                         (n_pre ? " + " + std::to_string(n_pre) + " prefilling" : "");
                printf("| %s | %ld | %s | %ld | %s | %.2f | %.2f | %s | %ld |\n", name, depth, load.c_str(), b, sel.c_str(),
                       m, sd, b > 0 && dense > 0 ? (std::to_string(m/dense).substr(0, 5) + "x").c_str() : "", steps[cfg]);
            }
            fflush(stdout);
            const char * why = llama_adamas_unavailable_reason(ctx);
            if (why) fprintf(stderr, "Adamas unavailable: %s\n", why);
            llama_free(ctx);
        }
        llama_model_free(mdl);
    }
    printf("CUDA graph messages while Adamas decoded:");
    for (auto & kv : g_graph_msgs) printf(" [%s] x%d", kv.first.c_str(), kv.second);
    printf("\n");
    return 0;
}
