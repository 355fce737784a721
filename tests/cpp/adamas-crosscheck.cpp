// Diagnostic (not a test): does a GPU decode give the CPU's answers on a real model, and if not, where do they
// part? Feeds a text token by token from position 0 (the perplexity protocol of `eval ppl`) to a context on the
// device (-ngl) and to a CPU-only reference context, and prints both perplexities and how far the logits drift.
// With --ops, every Adamas node (query encode, select, attention) and every flash-attention node of the device
// graph is also run again on the CPU from the device's own inputs, right after the device computed it (the
// scheduler's eval callback), so an op that gives other answers on real inputs shows, apart from the drift of
// the inputs themselves: select nodes must give the same indices, attention nodes the same rows to within
// rounding (flash attention's figure is the rounding baseline). Key codes written to the cache are checked at
// the end with llama_adamas_verify_codes.
//
// With --perturb EPS[:SEED], the device context's post-RoPE queries and keys (the ROPE nodes named Qcur / Kcur)
// are multiplied element by element by 1 + EPS*g, g standard normal from a seeded generator, before anything
// reads them: how much a given relative error in q and k (the size of two backends' rounding differences) moves
// the perplexity of dense and of sparse attention (run it with -ngl 0 to perturb the CPU against itself).
//
// With --rope-cuda, the device context's Qcur / Kcur ROPE nodes are recomputed on the host with the angles CUDA's
// rope.cu gets under -use_fast_math (theta = pos * __powf(theta_scale, i/2), then __sinf / __cosf, which scale the
// angle to revolutions with a round-toward-zero multiply before the hardware sine; the sine of that is taken
// exactly here, and __powf as float exp2(log2) correctly rounded: a lower bound of the GPU's error), so a CPU run
// shows what CUDA's angles alone do to the perplexity (rope modes normal and NeoX, no YaRN, no frequency factors).
//
// With --compare, chosen nodes of the device graph are compared with the same nodes of the first reference graph
// at every step (the two contexts decode the same tokens from their own caches, so this is the drift perplexity
// sees): per layer, the relative L2 difference of the attention input norm, the post-RoPE q and k, the attention
// output and the layer output, and the overlap of the selected cells (adamas_idx, per head, order ignored): where
// the two backends part, and whether the selections part more than their inputs do.
//
// --dense leaves Adamas off in every context (upstream's attention throughout), for the same comparisons of dense
// decoding (a budget above the context cannot stand for it on CUDA, whose select stops at 16384 cells).
//
// usage: adamas-crosscheck -m MODEL --text FILE [-n 1024] [--offset 0] [-ngl 99] [--ref-ngl 0 | --no-ref]
//        [--ref-threads 16,8] [-b 64] [--n-dense 2] [--no-kqv-offload]
//        [--rerank 4] [--select head|group|exact] [--ops | --ops-all [--ops-threads N]] [--perturb EPS[:SEED]] [--rope-cuda] [--compare] [--dense] [-t 8]
// (--ops-threads: the CPU re-runs use N threads, so with -ngl 0 it shows whether an op's result depends on the
// thread count; -t: the contexts' threads; --ref-threads: one reference context per thread count, whose spread
// is the CPU's own rounding noise; --offset: the text's window starts that many tokens in; --no-kqv-offload:
// the device context keeps its KV cache and attention on the CPU, the matrix products on the device)
#include "llama.h"
#include "llama-adamas.h"

#include "ggml.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

static void quiet_log(ggml_log_level level, const char * text, void *) {
    if (level >= GGML_LOG_LEVEL_WARN || strstr(text, "Adamas")) {
        fputs(text, stderr);
    }
}

// ---- re-running one device node on the CPU -------------------------------------------------------------------

// |a - b| / |b| over n floats (the relative L2 difference of a row)
static double rel_l2(const float * a, const float * b, int64_t n) {
    double d2 = 0.0, b2 = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const double d = (double) a[i] - b[i];
        d2 += d*d;
        b2 += (double) b[i]*b[i];
    }
    return std::sqrt(d2/std::max(b2, 1e-30));
}

struct op_stats {
    int64_t nodes = 0;
    int64_t rows = 0, rows_off = 0;  // F32 rows, and those with relative L2 error > 1e-2
    double  max_rel = 0.0, sum_rel = 0.0;
    int64_t elems = 0, elems_off = 0; // integer outputs: differing elements
    std::string first_off;            // the first node that was off, and where
};

struct crosscheck {
    ggml_backend_t cpu = nullptr;
    int64_t step = 0;
    bool active = false;
    bool ops = false;               // re-run the checked nodes on the CPU
    bool ops_all = false;           // and upstream's RoPE, norms and products
    double perturb = 0.0;           // relative noise on the post-RoPE q and k (0: none)
    bool   rope_cuda = false;       // Qcur / Kcur ROPE nodes recomputed with CUDA's fast-math angles
    std::mt19937_64 rng;
    std::map<std::string, op_stats> stats;
    bool compare = false;           // --compare: capture the compared nodes of the device and the reference
    struct capture { int64_t n0 = 0; bool idx = false; std::vector<uint8_t> data; }; // row length, indices or F32
    std::map<std::string, capture> cap[2]; // this step's captures: [0] device, [1] reference
    struct drift { double sum = 0.0, max = 0.0; int64_t steps = 0; }; // per step: the mean over rows
    std::map<std::string, drift> diff;     // per node key
};

// the post-RoPE query and key nodes, which --perturb and --rope-cuda rewrite
static bool qk_rope_node(const ggml_tensor * t) {
    return t->op == GGML_OP_ROPE && t->type == GGML_TYPE_F32 &&
           (strncmp(t->name, "Qcur", 4) == 0 || strncmp(t->name, "Kcur", 4) == 0);
}

// the callback's user data: the shared state and which context calls
struct side_cb {
    crosscheck * cc;
    int side;   // 0: device, 1: the first reference, 2+: not captured
};

// the nodes --compare looks at: per layer the attention's input norm, the post-RoPE q and k, the attention output
// (before the output projection), the layer output, the selection; then the final norm and the logits
static bool compared_node(const ggml_tensor * t) {
    static const char * names[] = { "attn_norm-", "kqv_out-", "l_out-", "adamas_idx-", "result_norm", "result_output" };
    if (!ggml_is_contiguous(t)) {
        return false;
    }
    if (qk_rope_node(t)) {
        return true;
    }
    for (const char * n : names) {
        if (strncmp(t->name, n, strlen(n)) == 0) {
            return t->type == GGML_TYPE_F32 || t->type == GGML_TYPE_I32;
        }
    }
    return false;
}

// the key a node is compared under: its name, and its op where one name has several nodes (Qcur-5 is the
// product, the reshape and the RoPE)
static std::string compare_key(const ggml_tensor * t) {
    return std::string(t->name) + "/" + ggml_op_desc(t);
}

static void capture_node(crosscheck & cc, int side, const ggml_tensor * t) {
    GGML_ASSERT(ggml_is_contiguous(t));
    auto & c = cc.cap[side][compare_key(t)];
    c.n0  = t->ne[0];
    c.idx = t->type == GGML_TYPE_I32;
    c.data.resize(ggml_nbytes(t));
    ggml_backend_tensor_get(t, c.data.data(), 0, c.data.size());
}

// after both contexts computed a step: F32 nodes by relative L2 difference, index rows by overlap (1 - the share of
// the reference's valid cells the device also selected)
static void compare_step(crosscheck & cc) {
    for (auto & [key, a] : cc.cap[0]) {
        auto it = cc.cap[1].find(key);
        if (it == cc.cap[1].end() || it->second.data.size() != a.data.size()) {
            continue;
        }
        const uint8_t * pa = a.data.data();
        const uint8_t * pb = it->second.data.data();
        const int64_t n = (int64_t) a.data.size()/4, n0 = a.n0;
        double rel_sum = 0.0, rel_max = 0.0;
        int64_t rows = 0;
        for (int64_t r = 0; r*n0 < n; r++) {
            double rel = 0.0;
            if (a.idx) {
                std::vector<int32_t> x((const int32_t *) pa + r*n0, (const int32_t *) pa + (r + 1)*n0);
                std::vector<int32_t> y((const int32_t *) pb + r*n0, (const int32_t *) pb + (r + 1)*n0);
                x.erase(std::remove_if(x.begin(), x.end(), [](int32_t c) { return c < 0; }), x.end());
                y.erase(std::remove_if(y.begin(), y.end(), [](int32_t c) { return c < 0; }), y.end());
                std::sort(x.begin(), x.end());
                std::sort(y.begin(), y.end());
                std::vector<int32_t> both;
                std::set_intersection(x.begin(), x.end(), y.begin(), y.end(), std::back_inserter(both));
                rel = y.empty() ? 0.0 : 1.0 - (double) both.size()/y.size();
            } else {
                rel = rel_l2((const float *) pa + r*n0, (const float *) pb + r*n0, n0);
            }
            rel_sum += rel;
            rel_max = std::max(rel_max, rel);
            rows++;
        }
        auto & d = cc.diff[key];
        d.sum += rows ? rel_sum/rows : 0.0;
        d.max  = std::max(d.max, rel_max);
        d.steps++;
    }
    cc.cap[0].clear();
    cc.cap[1].clear();
}

// the --compare table: a row per layer, a column per node kind (mean over steps of the mean over rows; max)
static void print_compare(const crosscheck & cc) {
    static const char * cols[][2] = { { "attn_norm-", "attn_norm" }, { "Qcur-", "q (post-RoPE)" }, { "Kcur-", "k (post-RoPE)" },
                                      { "kqv_out-", "attention out" }, { "l_out-", "layer out" }, { "adamas_idx-", "selection: share not shared" } };
    printf("\n| layer |");
    for (auto & c : cols) printf(" %s |", c[1]);
    printf("\n|---:|");
    for (size_t i = 0; i < sizeof(cols)/sizeof(cols[0]); i++) printf("---:|");
    printf("\n");
    for (int il = 0; il < 1024; il++) {
        std::string row = "| " + std::to_string(il) + " |";
        bool any = false;
        for (auto & c : cols) {
            std::string cell = " |";
            const std::string pre = c[0] + std::to_string(il) + "/";
            for (auto & [key, d] : cc.diff) {
                const bool qk = c[0][0] == 'Q' || c[0][0] == 'K'; // of the Qcur / Kcur nodes, the RoPE's
                if (key.compare(0, pre.size(), pre) == 0 && (!qk || key.find("/ROPE") != std::string::npos)) {
                    char buf[64];
                    snprintf(buf, sizeof(buf), " %.2e (max %.1e) |", d.sum/d.steps, d.max);
                    cell = buf;
                    any = true;
                    break;
                }
            }
            row += cell;
        }
        if (!any) {
            if (il > 0) break;
            continue;
        }
        printf("%s\n", row.c_str());
    }
    for (auto & [key, d] : cc.diff) {
        if (key.compare(0, 6, "result") == 0) {
            printf("%s: mean %.2e, max %.1e\n", key.c_str(), d.sum/d.steps, d.max);
        }
    }
}

// x *= 1 + eps*g for every element (a contiguous F32 tensor), written back before later nodes read it
static void perturb_node(crosscheck & cc, ggml_tensor * t) {
    GGML_ASSERT(ggml_is_contiguous(t));
    std::vector<float> x(ggml_nelements(t));
    ggml_backend_tensor_get(t, x.data(), 0, x.size()*sizeof(float));
    std::normal_distribution<double> g(0.0, 1.0);
    for (float & v : x) {
        v = (float) (v*(1.0 + cc.perturb*g(cc.rng)));
    }
    ggml_backend_tensor_set(t, x.data(), 0, x.size()*sizeof(float));
}

static bool checked_op(const ggml_tensor * t, bool all, int64_t step) {
    switch (t->op) {
        case GGML_OP_ADAMAS_ENCODE: return t->view_src == nullptr; // a key write is a view of the codes: verify_codes checks those
        case GGML_OP_ADAMAS_SELECT:
        case GGML_OP_ADAMAS_ATTN:
        case GGML_OP_FLASH_ATTN_EXT: return true;
        // --ops-all: upstream's ops around them too (the products every 64th step: each re-run copies its weight).
        // Not GLU: CUDA fuses the gate and up products into it, and their own buffers are then never written.
        case GGML_OP_ROPE:
        case GGML_OP_RMS_NORM:   return all;
        case GGML_OP_MUL_MAT:    return all && step % 64 == 0;
        default: return false;
    }
}

static std::string op_label(const ggml_tensor * t) {
    if (t->op == GGML_OP_ADAMAS_ATTN) {
        return ((const int32_t *) t->op_params)[2] > 0 ? // n_keep: the rerank's
                "ADAMAS_ATTN (rerank)" : "ADAMAS_ATTN";
    }
    if (t->op == GGML_OP_ROPE || t->op == GGML_OP_MUL_MAT || t->op == GGML_OP_RMS_NORM) {
        // which one: Qcur / Kcur, ffn_up, result_output, ... (the name without its layer)
        const char * dash = strrchr(t->name, '-');
        return std::string(ggml_op_name(t->op)) + " " + std::string(t->name, dash ? dash - t->name : strlen(t->name));
    }
    return ggml_op_name(t->op);
}

// Copies a device tensor (a view keeps its strides) into host memory as a CPU tensor of ctx.
static ggml_tensor * to_host(ggml_context * ctx, const ggml_tensor * t, std::vector<std::vector<uint8_t>> & keep) {
    ggml_tensor * h = ggml_new_tensor(ctx, t->type, GGML_MAX_DIMS, t->ne);
    memcpy(h->nb, t->nb, sizeof(h->nb));
    keep.emplace_back(ggml_nbytes(t));
    ggml_backend_tensor_get(t, keep.back().data(), 0, keep.back().size());
    h->data = keep.back().data();
    return h;
}

static void check_node(crosscheck & cc, ggml_tensor * node) {
    std::vector<std::vector<uint8_t>> keep;
    keep.reserve(GGML_MAX_SRC + 2);
    ggml_init_params ip = { (GGML_MAX_SRC + 2)*ggml_tensor_overhead() + ggml_graph_overhead(), nullptr, true };
    ggml_context * ctx = ggml_init(ip);

    ggml_tensor * out = ggml_new_tensor(ctx, node->type, GGML_MAX_DIMS, node->ne);
    out->op = node->op;
    memcpy(out->op_params, node->op_params, sizeof(out->op_params));
    for (int i = 0; i < GGML_MAX_SRC; i++) {
        out->src[i] = node->src[i] ? to_host(ctx, node->src[i], keep) : nullptr;
    }
    keep.emplace_back(ggml_nbytes(out));
    out->data = keep.back().data();
    ggml_cgraph * gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, out);
    if (ggml_backend_graph_compute(cc.cpu, gf) != GGML_STATUS_SUCCESS) {
        fprintf(stderr, "CPU recompute of %s failed\n", node->name);
        exit(1);
    }
    std::vector<uint8_t> dev(ggml_nbytes(node));
    ggml_backend_tensor_get(node, dev.data(), 0, dev.size());

    op_stats & s = cc.stats[op_label(node)];
    s.nodes++;
    bool off = false;
    if (node->type == GGML_TYPE_F32) {
        const float * a = (const float *) dev.data();
        const float * b = (const float *) out->data;
        const int64_t n0 = node->ne[0], nr = ggml_nelements(node)/n0;
        for (int64_t r = 0; r < nr; r++) {
            const double rel = rel_l2(a + r*n0, b + r*n0, n0);
            s.rows++;
            s.sum_rel += rel;
            s.max_rel = std::max(s.max_rel, rel);
            if (rel > 1e-2) {
                s.rows_off++;
                off = true;
            }
        }
    } else {
        const size_t es = ggml_type_size(node->type);
        const int64_t n = ggml_nbytes(node)/es;
        for (int64_t i = 0; i < n; i++) {
            if (memcmp(dev.data() + i*es, (const uint8_t *) out->data + i*es, es) != 0) {
                s.elems_off++;
                off = true;
            }
        }
        s.elems += n;
    }
    if (off && s.first_off.empty()) {
        s.first_off = std::string(node->name) + " at step " + std::to_string(cc.step);
    }
    ggml_free(ctx);
}

// CUDA's __sinf / __cosf: the angle in revolutions by a round-toward-zero float multiply, then the hardware sine
// (taken exactly here)
static float rz_revolutions(float x) {
    const double r = (double) x*(double) 0.15915494309189535f; // the constant as CUDA has it (float)
    float f = (float) r;
    if (std::fabs((double) f) > std::fabs(r)) { // rounded away from zero: one float step back toward it
        f = std::nextafter(f, 0.0f);
    }
    return f;
}

static void rope_cuda_node(ggml_tensor * t) {
    const ggml_tensor * x   = t->src[0];
    const ggml_tensor * pos = t->src[1];
    const int32_t * op = (const int32_t *) t->op_params;
    const int n_dims = op[1], mode = op[2];
    float freq_base, freq_scale, ext_factor, attn_factor;
    memcpy(&freq_base,   op + 5, sizeof(float));
    memcpy(&freq_scale,  op + 6, sizeof(float));
    memcpy(&ext_factor,  op + 7, sizeof(float));
    memcpy(&attn_factor, op + 8, sizeof(float));
    if ((mode != 0 && mode != GGML_ROPE_TYPE_NEOX) || ext_factor != 0.0f || t->src[2] || x->type != GGML_TYPE_F32 ||
        !ggml_is_contiguous(x) || !ggml_is_contiguous(t)) {
        fprintf(stderr, "--rope-cuda: %s has a rope this emulation does not cover\n", t->name);
        exit(2);
    }
    const int64_t ne0 = x->ne[0], ne1 = x->ne[1], ne2 = x->ne[2];
    std::vector<float> src(ggml_nelements(x)), dst(ggml_nelements(t));
    std::vector<int32_t> p(pos->ne[0]);
    ggml_backend_tensor_get(x, src.data(), 0, src.size()*sizeof(float));
    ggml_backend_tensor_get(pos, p.data(), 0, p.size()*sizeof(int32_t));
    ggml_backend_tensor_get(t, dst.data(), 0, dst.size()*sizeof(float)); // dimensions past n_dims stay as computed
    const float theta_scale = powf(freq_base, -2.0f/n_dims); // on the host in rope.cu: an exact powf
    for (int64_t i2 = 0; i2 < ne2; i2++) {
        for (int64_t i1 = 0; i1 < ne1; i1++) {
            const float * a = src.data() + (i2*ne1 + i1)*ne0;
            float       * d = dst.data() + (i2*ne1 + i1)*ne0;
            for (int64_t i0 = 0; i0 < n_dims; i0 += 2) {
                const float y  = (float) (i0/2);
                const float pw = (float) std::exp2((double) (y*(float) std::log2((double) theta_scale))); // __powf
                const float theta = freq_scale*((float) p[i2]*pw);
                const double rev = 2.0*M_PI*(double) rz_revolutions(theta);
                const float c = (float) std::cos(rev)*attn_factor;
                const float sn = (float) std::sin(rev)*attn_factor;
                const int64_t j0 = mode == 0 ? i0 : i0/2, j1 = mode == 0 ? i0 + 1 : i0/2 + n_dims/2;
                const float x0 = a[j0], x1 = a[j1];
                d[j0] = x0*c - x1*sn;
                d[j1] = x0*sn + x1*c;
            }
        }
    }
    ggml_backend_tensor_set(t, dst.data(), 0, dst.size()*sizeof(float));
}

static bool eval_cb(ggml_tensor * t, bool ask, void * user) {
    const auto & sc = *(side_cb *) user;
    auto & cc = *sc.cc;
    const bool cmp = cc.compare && sc.side <= 1 && compared_node(t);
    const bool chk = sc.side == 0 && cc.ops && checked_op(t, cc.ops_all, cc.step);
    const bool prt = sc.side == 0 && (cc.perturb > 0.0 || cc.rope_cuda) && qk_rope_node(t);
    if (!cc.active || !(chk || prt || cmp)) {
        return ask ? false : true;
    }
    if (!ask) {
        if (cmp && sc.side == 1) {
            capture_node(cc, 1, t);
        }
        if (chk) {
            check_node(cc, t);
        }
        if (prt && cc.rope_cuda) {
            rope_cuda_node(t);
        }
        if (prt && cc.perturb > 0.0) {
            perturb_node(cc, t);
        }
        if (cmp && sc.side == 0) {
            capture_node(cc, 0, t); // after --perturb / --rope-cuda rewrote it: what later nodes read
        }
    }
    return true;
}

// ---- the run -------------------------------------------------------------------------------------------------

static double log_softmax_at(const float * l, int n, int tok) {
    const float mx = *std::max_element(l, l + n);
    double z = 0.0;
    for (int i = 0; i < n; i++) {
        z += std::exp((double) l[i] - mx);
    }
    return (double) l[tok] - mx - std::log(z);
}

int main(int argc, char ** argv) {
    std::string model, text;
    int n_tok = 1024, ngl = 99, ref_ngl = 0, n_threads = 8, ops_threads = 0, offset = 0;
    std::vector<int> ref_threads;
    bool ops = false, ops_all = false, kqv_offload = true;
    double perturb = 0.0;
    unsigned long long perturb_seed = 1;
    bool rope_cuda = false, compare = false, dense = false;
    llama_adamas_params ap = llama_adamas_default_params();
    ap.budget = 64;
    for (int i = 1; i < argc; i++) {
        const std::string a = argv[i];
        auto next = [&]() { if (i + 1 >= argc) { fprintf(stderr, "%s needs a value\n", a.c_str()); exit(2); } return argv[++i]; };
        if (a == "-m") model = next();
        else if (a == "--text") text = next();
        else if (a == "-n") n_tok = atoi(next());
        else if (a == "--offset") offset = atoi(next());
        else if (a == "--ref-threads") {
            for (const char * q = next(); *q; ) {
                char * e = nullptr;
                ref_threads.push_back((int) strtol(q, &e, 10));
                if (e == q || ref_threads.back() < 1) { fprintf(stderr, "bad --ref-threads\n"); return 2; }
                q = *e == ',' ? e + 1 : e;
            }
        }
        else if (a == "-ngl") ngl = atoi(next());
        else if (a == "--ref-ngl") ref_ngl = atoi(next());
        else if (a == "--no-ref") ref_ngl = -1;
        else if (a == "-b") ap.budget = atoi(next());
        else if (a == "--rerank") ap.rerank = atoi(next());
        else if (a == "-t") n_threads = atoi(next());
        else if (a == "--ops") ops = true;
        else if (a == "--ops-all") ops = ops_all = true;
        else if (a == "--n-dense") ap.n_dense = atoi(next());
        else if (a == "--no-kqv-offload") kqv_offload = false;
        else if (a == "--ops-threads") ops_threads = atoi(next());
        else if (a == "--rope-cuda") rope_cuda = true;
        else if (a == "--compare") compare = true;
        else if (a == "--dense") dense = true;
        else if (a == "--perturb") {
            char * e = nullptr;
            const char * v = next();
            perturb = strtod(v, &e);
            if (e == v || perturb < 0.0 || (*e != '\0' && *e != ':')) { fprintf(stderr, "bad --perturb %s\n", v); return 2; }
            perturb_seed = *e == ':' ? strtoull(e + 1, nullptr, 10) : 1;
        }
        else if (a == "--select") {
            const std::string m = next();
            ap.select_mode = m == "head" ? LLAMA_ADAMAS_SELECT_HEAD : m == "group" ? LLAMA_ADAMAS_SELECT_GROUP :
                             m == "exact" ? LLAMA_ADAMAS_SELECT_EXACT : -1;
        } else {
            fprintf(stderr, "usage: %s -m MODEL --text FILE [-n 1024] [--offset 0] [-ngl 99] [--ref-ngl 0 | --no-ref] [--ref-threads 16,8] [-b 64] [--n-dense 2] [--no-kqv-offload] "
                            "[--rerank 4] [--select head|group|exact] [--ops | --ops-all [--ops-threads N]] [--perturb EPS[:SEED]] [--rope-cuda] [--compare] [--dense] [-t 8]\n", argv[0]);
            return 2;
        }
    }
    if (const char * why = llama_adamas_params_check(&ap)) {
        fprintf(stderr, "bad Adamas parameters: %s\n", why);
        return 2;
    }
    if (compare && ref_ngl < 0) {
        fprintf(stderr, "--compare needs a reference context\n");
        return 2;
    }
    if (model.empty() || text.empty()) {
        fprintf(stderr, "-m MODEL and --text FILE are required\n");
        return 2;
    }
    llama_log_set(quiet_log, nullptr);
    llama_backend_init();

    crosscheck cc;
    cc.ops = ops;
    cc.ops_all = ops_all;
    cc.perturb = perturb;
    cc.rope_cuda = rope_cuda;
    cc.compare = compare;
    cc.rng.seed(perturb_seed);
    cc.cpu = ggml_backend_cpu_init();
    ggml_backend_cpu_set_n_threads(cc.cpu, ops_threads > 0 ? ops_threads : n_threads);

    struct side { std::string name; int ngl; int n_threads; llama_model * mdl = nullptr; llama_context * ctx = nullptr; double nll = 0.0; };
    std::vector<side> sides = { { "device", ngl, n_threads } };
    side_cb cbs[2] = { { &cc, 0 }, { &cc, 1 } };
    const bool device_hooks = ops || perturb > 0.0 || rope_cuda; // the device context's own callback uses
    if (ref_threads.empty()) {
        ref_threads.push_back(n_threads);
    }
    for (size_t i = 0; i < ref_threads.size() && ref_ngl >= 0; i++) {
        sides.push_back({ i == 0 ? "reference" : "reference " + std::to_string(i + 1), ref_ngl, ref_threads[i] });
    }
    for (auto & sd : sides) {
        llama_model_params mp = llama_model_default_params();
        mp.n_gpu_layers = sd.ngl;
        sd.mdl = llama_model_load_from_file(model.c_str(), mp);
        if (!sd.mdl) { fprintf(stderr, "cannot load %s\n", model.c_str()); return 1; }
        llama_context_params cp = llama_context_default_params();
        cp.n_ctx = std::max(8192, n_tok + 8);
        cp.n_batch = 512;
        cp.n_ubatch = 512;
        cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_ENABLED;
        cp.n_threads = cp.n_threads_batch = sd.n_threads;
        cp.offload_kqv = kqv_offload;
        const int si = (int) (&sd - &sides[0]);
        if ((device_hooks && si == 0) || (compare && si <= 1)) {
            cp.cb_eval = eval_cb;
            cp.cb_eval_user_data = &cbs[si];
        }
        sd.ctx = llama_init_from_model(sd.mdl, cp);
        if (!sd.ctx || (!dense && llama_adamas_set(sd.ctx, &ap) != 0)) { fprintf(stderr, "context setup failed\n"); return 1; }
        if (const char * why = dense ? nullptr : llama_adamas_unavailable_reason(sd.ctx)) {
            fprintf(stderr, "%s: Adamas unavailable: %s\n", sd.name.c_str(), why);
            return 1;
        }
    }

    std::ifstream f(text, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    const std::string body = ss.str();
    const llama_vocab * vocab = llama_model_get_vocab(sides[0].mdl);
    std::vector<llama_token> toks(body.size() + 16);
    const int nt = llama_tokenize(vocab, body.c_str(), (int) body.size(), toks.data(), (int) toks.size(), true, false);
    if (nt <= 1) { fprintf(stderr, "cannot tokenize %s\n", text.c_str()); return 1; }
    if (offset < 0 || offset + 2 > nt) { fprintf(stderr, "--offset %d: the text has %d tokens\n", offset, nt); return 2; }
    if (offset > 0) {
        // a later window of the text, still from position 0 and after the BOS token where the vocabulary has one
        const int keep = llama_vocab_get_add_bos(vocab) ? 1 : 0;
        toks.erase(toks.begin() + keep, toks.begin() + keep + offset);
        toks.resize(nt - offset);
    }
    toks.resize(std::min((int) toks.size(), n_tok));
    const int n_vocab = llama_vocab_n_tokens(vocab);

    double max_dlogit = 0.0;
    int argmax_same = 0;
    for (int t = 0; t + 1 < (int) toks.size(); t++) {
        cc.step = t;
        std::vector<const float *> logits;
        for (auto & sd : sides) {
            cc.active = &sd == &sides[0] ? device_hooks || compare : compare && &sd == &sides[1];
            llama_batch b = llama_batch_get_one(&toks[t], 1);
            if (llama_decode(sd.ctx, b) != 0) { fprintf(stderr, "%s: decode failed at %d\n", sd.name.c_str(), t); return 1; }
            cc.active = false;
            const float * l = llama_get_logits_ith(sd.ctx, -1);
            sd.nll -= log_softmax_at(l, n_vocab, toks[t + 1]);
            logits.push_back(l);
        }
        if (compare) {
            compare_step(cc);
        }
        if (logits.size() >= 2) {
            double d = 0.0;
            for (int i = 0; i < n_vocab; i++) {
                d = std::max(d, (double) std::fabs(logits[0][i] - logits[1][i]));
            }
            max_dlogit = std::max(max_dlogit, d);
            argmax_same += std::max_element(logits[0], logits[0] + n_vocab) - logits[0] ==
                           std::max_element(logits[1], logits[1] + n_vocab) - logits[1];
        }
    }

    const int n_pred = (int) toks.size() - 1;
    if (dense) {
        printf("dense (Adamas off), %d tokens", n_pred + 1);
    } else {
        printf("budget %d, rerank %d, select %d, %d tokens, %d sparse layers", ap.budget, ap.rerank, ap.select_mode,
               n_pred + 1, llama_adamas_n_sparse_layers(sides[0].ctx));
    }
    if (perturb > 0.0) {
        printf(", device q and k perturbed: eps %g, seed %llu", perturb, perturb_seed);
    }
    if (rope_cuda) {
        printf(", device RoPE with CUDA's fast-math angles");
    }
    printf("\n");
    printf("| context | n_gpu_layers | threads | perplexity | vs device | sparse steps | codes off (verify_codes) |\n"
           "|---|---:|---:|---:|---:|---:|---:|\n");
    for (auto & sd : sides) {
        printf("| %s | %d | %d | %.4f | %+.3f%% | %lld | %lld |\n", sd.name.c_str(), sd.ngl, sd.n_threads, std::exp(sd.nll/n_pred),
               100.0*(std::exp((sd.nll - sides[0].nll)/n_pred) - 1.0),
               (long long) llama_adamas_n_sparse_steps(sd.ctx), (long long) llama_adamas_verify_codes(sd.ctx));
    }
    if (sides.size() >= 2) {
        printf("device/reference perplexity - 1: %+.3f%%; max |logit difference| %.4f; same argmax %d/%d\n",
               100.0*(std::exp((sides[0].nll - sides[1].nll)/n_pred) - 1.0), max_dlogit, argmax_same, n_pred);
    }
    if (ops) {
        printf("\n| device node | nodes | rows | max rel. error | mean rel. error | rows > 1e-2 | int elements off | first off |\n"
               "|---|---:|---:|---:|---:|---:|---:|---|\n");
        for (auto & [name, s] : cc.stats) {
            printf("| %s | %lld | %lld | %.2e | %.2e | %lld | %lld/%lld | %s |\n", name.c_str(), (long long) s.nodes,
                   (long long) s.rows, s.max_rel, s.rows ? s.sum_rel/s.rows : 0.0, (long long) s.rows_off,
                   (long long) s.elems_off, (long long) s.elems, s.first_off.c_str());
        }
    }
    if (compare) {
        print_compare(cc);
    }
    for (auto & sd : sides) {
        llama_free(sd.ctx);
        llama_model_free(sd.mdl);
    }
    ggml_backend_free(cc.cpu);
    llama_backend_free();
    return 0;
}
