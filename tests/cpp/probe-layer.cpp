// probe: one layer's attention output for the short sequence's first decode token: flash attention (dense)
// and Adamas' sparse op (budget 64 > its 41 cells, so every cell is selected), against a double-precision
// reference from the captured Q, K, V (K, V rounded to F16 as the cache stores them). Scratch, not a test.
#include "llama.h"
#include "llama-adamas.h"
#include "ggml.h"
#include "ggml-backend.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

static void quiet_log(ggml_log_level level, const char * text, void *) {
    if (level >= GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

static llama_model * model;
static int n_vocab;

// captured tensors by name (the last graph's), as F32
static std::map<std::string, std::vector<float>> cap;
static std::map<std::string, std::vector<int64_t>> cap_ne;
static bool grab(ggml_tensor * t, bool ask, void *) {
    const std::string n = t->name;
    const bool want = n.rfind("Qcur-", 0) == 0 || n.rfind("Kcur-", 0) == 0 || n.rfind("Vcur-", 0) == 0 ||
                      n.rfind("kqv_out-", 0) == 0 || n.rfind("l_out-", 0) == 0;
    if (ask) return want;
    if (!want || t->type != GGML_TYPE_F32) return true;
    if (!ggml_is_contiguous(t)) return true;
    std::vector<float> d(ggml_nelements(t));
    ggml_backend_tensor_get(t, d.data(), 0, ggml_nbytes(t));
    cap[n] = d;
    cap_ne[n] = { t->ne[0], t->ne[1], t->ne[2], t->ne[3] };
    return true;
}

static llama_context * make(bool unified, const llama_adamas_params & ap) {
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 1024; cp.n_batch = 1024; cp.n_ubatch = 512; cp.n_seq_max = 2; cp.kv_unified = unified;
    cp.type_k = GGML_TYPE_F16; cp.type_v = GGML_TYPE_F16; cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_ENABLED;
    cp.n_threads = cp.n_threads_batch = 2;
    cp.cb_eval = grab; cp.cb_eval_user_data = nullptr;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx || llama_adamas_set(ctx, &ap) != 0) { fprintf(stderr, "ctx\n"); exit(1); }
    return ctx;
}

static void decode(llama_context * c, const std::vector<llama_token> & t, int pos0, int seq) {
    llama_batch b = llama_batch_init((int) t.size(), 0, 1);
    for (size_t i = 0; i < t.size(); i++) {
        b.token[i] = t[i]; b.pos[i] = pos0 + (int) i; b.n_seq_id[i] = 1; b.seq_id[i][0] = seq; b.logits[i] = i + 1 == t.size();
    }
    b.n_tokens = (int) t.size();
    if (llama_decode(c, b) != 0) { fprintf(stderr, "decode\n"); exit(1); }
    llama_batch_free(b);
}

static std::vector<llama_token> rtoks(std::mt19937 & rng, int n) {
    std::uniform_int_distribution<int> d(3, n_vocab - 1);
    std::vector<llama_token> t(n); for (auto & x : t) x = d(rng); return t;
}

static float f16r(float x) { return ggml_fp16_to_fp32(ggml_fp32_to_fp16(x)); }

static double rel(const float * a, const double * ref, int n) {
    double m = 0, s = 1e-30;
    for (int i = 0; i < n; i++) { m = std::max(m, std::fabs(a[i] - ref[i])); s = std::max(s, std::fabs(ref[i])); }
    return m/s;
}

int main(int argc, char ** argv) {
    llama_log_set(quiet_log, nullptr);
    llama_backend_init();
    model = llama_model_load_from_file(argv[1], llama_model_default_params());
    n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    const int n_layer = llama_model_n_layer(model);
    const int n_head = llama_model_n_head(model), n_head_kv = llama_model_n_head_kv(model);
    std::mt19937 rng(1234);
    const std::vector<llama_token> prompt = rtoks(rng, 300);
    const std::vector<llama_token> other = rtoks(rng, 400);
    const std::vector<llama_token> shrt(prompt.begin(), prompt.begin() + 40);
    const llama_token t_next = 463; // the dense greedy token after the 40

    llama_adamas_params def = llama_adamas_default_params();
    llama_adamas_params b64 = def; b64.budget = 64;

    // per run: captured prefill K/V (the short sequence's 40 tokens) and the decode step's tensors
    struct res { std::map<std::string, std::vector<float>> pre, step; int64_t sparse; };
    auto go = [&](const llama_adamas_params & p) {
        res r;
        llama_context * ctx = make(true, p);
        decode(ctx, other, 0, 0);           // the long sequence (unified cache: the step is then sparse)
        cap.clear();
        decode(ctx, shrt, 0, 1);
        r.pre = cap;
        cap.clear();
        decode(ctx, { t_next }, 40, 1);
        r.step = cap;
        r.sparse = llama_adamas_n_sparse_steps(ctx);
        llama_free(ctx);
        return r;
    };
    const res d = go(def), s = go(b64);
    printf("sparse steps: dense %lld, budget 64 %lld\n", (long long) d.sparse, (long long) s.sparse);

    const int D = (int) cap_ne["Qcur-0"][0];
    const float scale = 1.0f/std::sqrt((float) D);
    printf("D %d, heads %d/%d\n", D, n_head, n_head_kv);
    printf("layer | kqv_out vs f64 ref: dense FA, sparse (own inputs) | dense vs sparse: kqv_out, l_out\n");
    for (int il = 0; il < n_layer; il++) {
        auto ref_of = [&](const res & r) {
            // reference attention of the step's query over the 41 cells, from this run's own Q, K, V
            const std::string L = std::to_string(il);
            const auto & Kp = r.pre.at("Kcur-" + L), & Vp = r.pre.at("Vcur-" + L);
            const auto & Ks = r.step.at("Kcur-" + L), & Vs = r.step.at("Vcur-" + L), & Q = r.step.at("Qcur-" + L);
            const int n = 41;
            std::vector<double> out(D*n_head);
            for (int h = 0; h < n_head; h++) {
                const int kh = h/(n_head/n_head_kv);
                std::vector<double> lg(n);
                double M = -1e300;
                for (int c = 0; c < n; c++) {
                    const float * k = c < 40 ? &Kp[(c*n_head_kv + kh)*D] : &Ks[kh*D];
                    double sum = 0;
                    for (int i = 0; i < D; i++) sum += (double) Q[h*D + i]*f16r(k[i]);
                    lg[c] = sum*scale; M = std::max(M, lg[c]);
                }
                double S = 0;
                for (int c = 0; c < n; c++) { lg[c] = std::exp(lg[c] - M); S += lg[c]; }
                for (int c = 0; c < n; c++) {
                    const float * v = c < 40 ? &Vp[(c*n_head_kv + kh)*D] : &Vs[kh*D];
                    for (int i = 0; i < D; i++) out[h*D + i] += lg[c]/S*f16r(v[i]);
                }
            }
            return out;
        };
        const std::string L = std::to_string(il);
        const auto rd = ref_of(d), rs = ref_of(s);
        const auto & kd = d.step.at("kqv_out-" + L), & ks = s.step.at("kqv_out-" + L);
        std::vector<double> kd64(kd.begin(), kd.end());
        const auto & ld = d.step.at("l_out-" + L), & ls = s.step.at("l_out-" + L);
        std::vector<double> ld64(ld.begin(), ld.end());
        printf("%5d | %.2e %.2e | %.2e %.2e\n", il, rel(kd.data(), rd.data(), D*n_head), rel(ks.data(), rs.data(), D*n_head),
               rel(ks.data(), kd64.data(), D*n_head), rel(ls.data(), ld64.data(), (int) ld.size()));
    }
    llama_model_free(model);
    return 0;
}
