// The three Adamas ops (ggml-adamas.h) on the CPU, each against an independent scalar reference written
// here in double precision from the header's spec (not from the kernels):
//   encode:      y = H x / sqrt(D) as a plain matrix product with the Sylvester Hadamard matrix, the paper's
//                four buckets, packed into the header's bit planes; also the set_rows form
//   select:      codes decoded back to 0..3 per dimension, L1 as a plain integer sum (not the popcount
//                formula), ranked by (distance asc, cell desc) after the +INF (forced) cells, first `budget`,
//                -1 padding; with a candidate list (select_cells) only the listed cells are ranked
//   attention:   softmax over the selected visible cells in double, K/V dequantized by our own scalar code
// Inputs are random, drawn fresh from a printed seed; every output is poisoned before each run so a kernel
// that writes nothing (or skips a part) fails. Codes and indices must match exactly; attention within a
// relative tolerance per K/V type (see attn_tolerance).
//
// usage: test-adamas-ops [SEED] [-v]   (a failure reproduces with its printed seed, same C++ standard library)
#include "ggml.h"
#include "ggml-cpu.h"
#include "ggml-adamas.h"

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cfloat>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

// ---- bookkeeping ----------------------------------------------------------------------------------------

static std::mt19937_64 g_rng;
static bool g_verbose  = false;
static int  g_n_checks = 0;
static int  g_n_failed = 0;

static std::string strfmt(const char * fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    return buf;
}

// one check: prints a line on failure (and on success with -v)
static void check(bool ok, const std::string & what, const std::string & detail) {
    g_n_checks++;
    if (!ok) {
        g_n_failed++;
        printf("FAIL %s: %s\n", what.c_str(), detail.c_str());
    } else if (g_verbose) {
        printf("ok   %s%s%s\n", what.c_str(), detail.empty() ? "" : ": ", detail.c_str());
    }
    fflush(stdout);
}

static int irand(int lo, int hi) { // inclusive
    return std::uniform_int_distribution<int>(lo, hi)(g_rng);
}

static double urand() {
    return std::uniform_real_distribution<double>(0.0, 1.0)(g_rng);
}

static double nrand() {
    return std::normal_distribution<double>(0.0, 1.0)(g_rng);
}

template <typename T>
static T pick(const std::vector<T> & v) {
    return v[irand(0, (int) v.size() - 1)];
}

// ---- ggml plumbing --------------------------------------------------------------------------------------

static ggml_context * new_ctx(size_t data_bytes) {
    ggml_init_params params = {
        /*.mem_size   =*/ data_bytes + 64*ggml_tensor_overhead() + ggml_graph_overhead() + (1u << 20),
        /*.mem_buffer =*/ nullptr,
        /*.no_alloc   =*/ false,
    };
    ggml_context * ctx = ggml_init(params);
    GGML_ASSERT(ctx);
    return ctx;
}

static ggml_cgraph * build(ggml_context * ctx, std::initializer_list<ggml_tensor *> outs) {
    ggml_cgraph * gf = ggml_new_graph(ctx);
    for (ggml_tensor * t : outs) {
        ggml_build_forward_expand(gf, t);
    }
    return gf;
}

static bool compute(ggml_cgraph * gf, int n_threads) {
    ggml_cplan plan = ggml_graph_plan(gf, n_threads, nullptr);
    std::vector<uint8_t> work(plan.work_size + 1);
    plan.work_data = plan.work_size > 0 ? work.data() : nullptr;
    return ggml_graph_compute(gf, &plan) == GGML_STATUS_SUCCESS;
}

static void poison(ggml_tensor * t, uint8_t byte) {
    memset(t->data, byte, ggml_nbytes(t));
}

static char * elem_ptr(const ggml_tensor * t, int64_t i0, int64_t i1, int64_t i2, int64_t i3) {
    return (char *) t->data + i0*t->nb[0] + i1*t->nb[1] + i2*t->nb[2] + i3*t->nb[3];
}

// value of an F32 or F16 element
static double get_f(const ggml_tensor * t, int64_t i0, int64_t i1, int64_t i2, int64_t i3) {
    const char * p = elem_ptr(t, i0, i1, i2, i3);
    if (t->type == GGML_TYPE_F32) {
        float v;
        memcpy(&v, p, sizeof(v));
        return v;
    }
    GGML_ASSERT(t->type == GGML_TYPE_F16);
    ggml_fp16_t h;
    memcpy(&h, p, sizeof(h));
    return ggml_fp16_to_fp32(h);
}

// stores v (F32, or rounded to F16); returns the value stored
static float set_f(ggml_tensor * t, int64_t i0, int64_t i1, int64_t i2, int64_t i3, float v) {
    char * p = elem_ptr(t, i0, i1, i2, i3);
    if (t->type == GGML_TYPE_F32) {
        memcpy(p, &v, sizeof(v));
        return v;
    }
    GGML_ASSERT(t->type == GGML_TYPE_F16);
    const ggml_fp16_t h = ggml_fp32_to_fp16(v);
    memcpy(p, &h, sizeof(h));
    return ggml_fp16_to_fp32(h);
}

// mask value of cell c for query row iq of stream s (a mask with ne[3] == 1 serves every stream)
static double mask_value(const ggml_tensor * mask, int64_t c, int64_t iq, int64_t s) {
    if (mask == nullptr) {
        return 0.0;
    }
    return get_f(mask, c, iq, 0, mask->ne[3] == 1 ? 0 : s);
}

static const char * type_name(ggml_type t) {
    return t == GGML_TYPE_COUNT ? "none" : ggml_type_name(t);
}

// ---- reference encode -----------------------------------------------------------------------------------

static int parity(unsigned v) {
    int p = 0;
    for (; v; v &= v - 1) {
        p ^= 1;
    }
    return p;
}

// Sylvester Hadamard matrix, H[i][j] = (-1)^popcount(i & j), as an explicit matrix
static const std::vector<int8_t> & hadamard(int D) {
    static std::map<int, std::vector<int8_t>> cache;
    std::vector<int8_t> & h = cache[D];
    if (h.empty()) {
        h.resize((size_t) D*D);
        for (int i = 0; i < D; i++) {
            for (int j = 0; j < D; j++) {
                h[(size_t) i*D + j] = parity((unsigned) (i & j)) ? -1 : 1;
            }
        }
    }
    return h;
}

struct encode_ref {
    std::vector<double>  y;    // transformed vector
    double               t;    // threshold
    std::vector<uint8_t> code; // 0..3 per dimension
};

static encode_ref ref_encode(const std::vector<double> & x, ggml_adamas_thr_mode mode, float thr, bool skip_wht) {
    const int D = (int) x.size();
    encode_ref r;
    r.y.assign(D, 0.0);
    if (skip_wht) {
        r.y = x;
    } else {
        const std::vector<int8_t> & h = hadamard(D);
        for (int i = 0; i < D; i++) {
            double acc = 0.0;
            for (int j = 0; j < D; j++) {
                acc += h[(size_t) i*D + j]*x[j];
            }
            r.y[i] = acc/std::sqrt((double) D);
        }
    }
    if (mode == GGML_ADAMAS_THR_FIXED) {
        r.t = thr;
    } else {
        double ss = 0.0;
        for (double v : r.y) {
            ss += v*v;
        }
        r.t = (double) thr*std::sqrt(ss/D);
    }
    r.code.resize(D);
    for (int d = 0; d < D; d++) {
        const double v = r.y[d];
        r.code[d] = v <= -r.t ? 0 : v <= 0.0 ? 1 : v <= r.t ? 2 : 3;
    }
    return r;
}

// header layout: sign plane (code >= 2) in bytes [0, D/8), magnitude plane (code 0 or 3) in [D/8, D/4),
// dimension d at bit d%8 of byte d/8
static void pack_codes(const uint8_t * code, int D, uint8_t * out) {
    memset(out, 0, D/4);
    for (int d = 0; d < D; d++) {
        const int s = code[d] >= 2;
        const int m = code[d] == 0 || code[d] == 3;
        out[d/8]       |= (uint8_t) (s << (d % 8));
        out[D/8 + d/8] |= (uint8_t) (m << (d % 8));
    }
}

static void unpack_codes(const uint8_t * bytes, int D, uint8_t * code) {
    for (int d = 0; d < D; d++) {
        const int s = (bytes[d/8]       >> (d % 8)) & 1;
        const int m = (bytes[D/8 + d/8] >> (d % 8)) & 1;
        code[d] = s ? (m ? 3 : 2) : (m ? 0 : 1);
    }
}

// Draws one input row (stored as F32 or F16 at p) and returns its reference encoding. The kernel computes
// y and t in float, so a coordinate within rounding distance of a bucket boundary could legitimately land
// on either side; to keep exact equality a fair check, a row with any |y - b| < 1e-4*max(1, t) for b in
// {-t, 0, t} is redrawn (far above float rounding at these magnitudes, rarely hit by random data).
static encode_ref draw_encode_row(ggml_tensor * a, int64_t i1, int64_t i2, int64_t i3, ggml_adamas_thr_mode mode,
                                  float thr, bool skip_wht, double scale, bool spikes) {
    const int D = (int) a->ne[0];
    std::vector<double> x(D);
    for (int attempt = 0; attempt < 1000; attempt++) {
        for (int d = 0; d < D; d++) {
            double v = scale*nrand();
            if (spikes && urand() < 0.03) {
                v *= 8.0; // outlier channels, as real keys have
            }
            x[d] = set_f(a, d, i1, i2, i3, (float) v);
        }
        encode_ref r = ref_encode(x, mode, thr, skip_wht);
        const double margin = 1e-4*std::max(1.0, r.t);
        bool near = !(r.t > 0.0);
        for (int d = 0; d < D && !near; d++) {
            const double y = r.y[d];
            near = std::fabs(y + r.t) < margin || std::fabs(y) < margin || std::fabs(y - r.t) < margin;
        }
        if (!near) {
            return r;
        }
    }
    fprintf(stderr, "draw_encode_row: could not draw a row away from the bucket boundaries\n");
    exit(2);
}

// first mismatching dimension of one head's code bytes, for the failure line
static std::string code_diff(const uint8_t * got, const encode_ref & r) {
    const int D = (int) r.code.size();
    std::vector<uint8_t> g(D);
    unpack_codes(got, D, g.data());
    for (int d = 0; d < D; d++) {
        if (g[d] != r.code[d]) {
            return strfmt("dim %d: y=%.9g t=%.9g expected code %d, got %d", d, r.y[d], r.t, r.code[d], g[d]);
        }
    }
    return "bytes differ but every dimension decodes equal (?)";
}

// ---- encode tests ---------------------------------------------------------------------------------------

struct encode_case {
    int D, n_head, n_rows, ne3;
    ggml_type type;
    ggml_adamas_thr_mode mode;
    float thr;
    bool skip_wht;
    double scale;
    bool permuted; // a is a permuted view ([D, n_rows, n_head] buffer), rows still contiguous in dim 0
    bool spikes;
    int n_threads;

    std::string str() const {
        return strfmt("encode [D=%d n_head=%d n_rows=%d ne3=%d %s %s thr=%g skip_wht=%d scale=%g permuted=%d spikes=%d threads=%d]",
            D, n_head, n_rows, ne3, ggml_type_name(type), mode == GGML_ADAMAS_THR_FIXED ? "FIXED" : "RMS", thr,
            skip_wht, scale, permuted, spikes, n_threads);
    }
};

static void test_encode(const encode_case & tc) {
    const size_t n_el = (size_t) tc.D*tc.n_head*tc.n_rows*tc.ne3;
    ggml_context * ctx = new_ctx(n_el*ggml_type_size(tc.type) + n_el/4);

    ggml_tensor * a;
    if (tc.permuted) {
        ggml_tensor * buf = ggml_new_tensor_4d(ctx, tc.type, tc.D, tc.n_rows, tc.n_head, tc.ne3);
        a = ggml_permute(ctx, buf, 0, 2, 1, 3);
    } else {
        a = ggml_new_tensor_4d(ctx, tc.type, tc.D, tc.n_head, tc.n_rows, tc.ne3);
    }

    std::vector<encode_ref> refs;
    for (int i3 = 0; i3 < tc.ne3; i3++) {
        for (int i2 = 0; i2 < tc.n_rows; i2++) {
            for (int i1 = 0; i1 < tc.n_head; i1++) {
                refs.push_back(draw_encode_row(a, i1, i2, i3, tc.mode, tc.thr, tc.skip_wht, tc.scale, tc.spikes));
            }
        }
    }

    ggml_tensor * out = ggml_adamas_encode(ctx, a, tc.mode, tc.thr, tc.skip_wht);
    ggml_cgraph * gf = build(ctx, {out});

    const int cs = tc.D/4;
    std::vector<uint8_t> expect(cs);
    // two runs with complementary poisons: a byte the kernel does not write cannot match both
    for (uint8_t fill : {(uint8_t) 0x00, (uint8_t) 0xff}) {
        poison(out, fill);
        if (!compute(gf, tc.n_threads)) {
            check(false, tc.str(), "graph compute failed");
            break;
        }
        std::string detail;
        size_t k = 0;
        for (int i3 = 0; i3 < tc.ne3 && detail.empty(); i3++) {
            for (int i2 = 0; i2 < tc.n_rows && detail.empty(); i2++) {
                for (int i1 = 0; i1 < tc.n_head && detail.empty(); i1++, k++) {
                    pack_codes(refs[k].code.data(), tc.D, expect.data());
                    const uint8_t * got = (const uint8_t *) elem_ptr(out, 0, i1, i2, i3);
                    if (memcmp(got, expect.data(), cs) != 0) {
                        detail = strfmt("poison 0x%02x, head %d row %d i3 %d: %s", fill, i1, i2, i3,
                                        code_diff(got, refs[k]).c_str());
                    }
                }
            }
        }
        check(detail.empty(), tc.str(), detail);
    }
    ggml_free(ctx);
}

struct set_rows_case {
    int D, n_head, n_rows, n_cells;
    ggml_type type;
    ggml_type idx_type;
    ggml_adamas_thr_mode mode;
    float thr;
    bool skip_wht;
    int layout; // 0: codes 2D contiguous; 1: codes 3D contiguous [W, n_cells/2, 2]; 2: 2D view with padded rows
    int n_threads;

    std::string str() const {
        return strfmt("encode_set_rows [D=%d n_head=%d n_rows=%d n_cells=%d %s idx %s %s thr=%g skip_wht=%d layout=%d threads=%d]",
            D, n_head, n_rows, n_cells, ggml_type_name(type), ggml_type_name(idx_type),
            mode == GGML_ADAMAS_THR_FIXED ? "FIXED" : "RMS", thr, skip_wht, layout, n_threads);
    }
};

static void test_encode_set_rows(const set_rows_case & tc) {
    const int W   = tc.n_head*tc.D/4;
    const int pad = tc.layout == 2 ? 24 : 0;
    ggml_context * ctx = new_ctx((size_t) (W + pad)*tc.n_cells + (size_t) tc.D*tc.n_head*tc.n_rows*4 + 8*tc.n_rows);

    ggml_tensor * buf;   // the whole memory the op may touch
    ggml_tensor * codes;
    if (tc.layout == 0) {
        buf = codes = ggml_new_tensor_2d(ctx, GGML_TYPE_I8, W, tc.n_cells);
    } else if (tc.layout == 1) {
        buf = codes = ggml_new_tensor_3d(ctx, GGML_TYPE_I8, W, tc.n_cells/2, 2);
    } else {
        buf   = ggml_new_tensor_2d(ctx, GGML_TYPE_I8, W + pad, tc.n_cells);
        codes = ggml_view_2d(ctx, buf, W, tc.n_cells, buf->nb[1], 0);
    }
    const size_t row_stride = codes->nb[1]; // flat row r starts at r*row_stride in every layout here

    ggml_tensor * a = ggml_new_tensor_3d(ctx, tc.type, tc.D, tc.n_head, tc.n_rows);
    std::vector<encode_ref> refs;
    for (int i = 0; i < tc.n_rows; i++) {
        for (int h = 0; h < tc.n_head; h++) {
            refs.push_back(draw_encode_row(a, h, i, 0, tc.mode, tc.thr, tc.skip_wht, 1.0, false));
        }
    }

    // distinct random target cells
    std::vector<int64_t> cells(tc.n_cells);
    for (int i = 0; i < tc.n_cells; i++) {
        cells[i] = i;
    }
    std::shuffle(cells.begin(), cells.end(), g_rng);
    cells.resize(tc.n_rows);
    ggml_tensor * idxs = ggml_new_tensor_1d(ctx, tc.idx_type, tc.n_rows);
    for (int i = 0; i < tc.n_rows; i++) {
        if (tc.idx_type == GGML_TYPE_I64) {
            ((int64_t *) idxs->data)[i] = cells[i];
        } else {
            ((int32_t *) idxs->data)[i] = (int32_t) cells[i];
        }
    }

    ggml_tensor * res = ggml_adamas_encode_set_rows(ctx, codes, a, idxs, tc.mode, tc.thr, tc.skip_wht);
    ggml_cgraph * gf = build(ctx, {res});

    const size_t nbytes = ggml_nbytes(buf);
    std::vector<uint8_t> before(nbytes);
    for (auto & b : before) {
        b = (uint8_t) irand(0, 255);
    }
    for (int run = 0; run < 2; run++) {
        if (run == 1) {
            for (auto & b : before) {
                b = (uint8_t) ~b; // complementary poison
            }
        }
        memcpy(buf->data, before.data(), nbytes);
        if (!compute(gf, tc.n_threads)) {
            check(false, tc.str(), "graph compute failed");
            break;
        }
        std::vector<uint8_t> expect = before;
        for (int i = 0; i < tc.n_rows; i++) {
            for (int h = 0; h < tc.n_head; h++) {
                pack_codes(refs[(size_t) i*tc.n_head + h].code.data(), tc.D, expect.data() + cells[i]*row_stride + (size_t) h*tc.D/4);
            }
        }
        const uint8_t * got = (const uint8_t *) buf->data;
        std::string detail;
        for (size_t b = 0; b < nbytes && detail.empty(); b++) {
            if (got[b] == expect[b]) {
                continue;
            }
            const int64_t r   = (int64_t) (b/row_stride);
            const size_t  col = b % row_stride;
            const auto    it  = std::find(cells.begin(), cells.end(), r);
            if (it == cells.end() || col >= (size_t) W) {
                detail = strfmt("run %d: byte %zu (row %" PRId64 " col %zu) is not a target but changed 0x%02x -> 0x%02x",
                                run, b, r, col, before[b], got[b]);
            } else {
                const int i = (int) (it - cells.begin());
                const int h = (int) (col/(tc.D/4));
                detail = strfmt("run %d: input row %d -> cell %" PRId64 ", head %d: %s", run, i, r, h,
                                code_diff(got + r*row_stride + (size_t) h*tc.D/4, refs[(size_t) i*tc.n_head + h]).c_str());
            }
        }
        check(detail.empty(), tc.str(), detail);
    }
    ggml_free(ctx);
}

// ---- reference select -----------------------------------------------------------------------------------

// Decoded codes of a code tensor [D/4, nh, n, ns] (any strides): out[((s*n + i)*nh + h)*D + d]
static std::vector<uint8_t> decode_all(const ggml_tensor * t) {
    const int D = (int) (4*t->ne[0]);
    std::vector<uint8_t> out((size_t) D*t->ne[1]*t->ne[2]*t->ne[3]);
    size_t k = 0;
    for (int64_t s = 0; s < t->ne[3]; s++) {
        for (int64_t i = 0; i < t->ne[2]; i++) {
            for (int64_t h = 0; h < t->ne[1]; h++, k++) {
                unpack_codes((const uint8_t *) elem_ptr(t, 0, h, i, s), D, out.data() + k*D);
            }
        }
    }
    return out;
}

static int l1(const uint8_t * a, const uint8_t * b, int D) {
    int acc = 0;
    for (int d = 0; d < D; d++) {
        acc += std::abs((int) a[d] - (int) b[d]);
    }
    return acc;
}

struct select_ref {
    std::vector<int32_t> idx;  // [budget, n_sel, n_q, ns]
    std::vector<int32_t> dist; // distance of every (unit, cell): [n_kv, n_sel, n_q, ns], for failure lines
};

static select_ref ref_select(const ggml_tensor * qc, const ggml_tensor * kc, const ggml_tensor * mask, int budget,
                             ggml_adamas_select_mode mode, const ggml_tensor * cells = nullptr) {
    const int D         = (int) (4*qc->ne[0]);
    const int n_head    = (int) qc->ne[1];
    const int n_q       = (int) qc->ne[2];
    const int ns        = (int) qc->ne[3];
    const int n_head_kv = (int) kc->ne[1];
    const int n_kv      = (int) kc->ne[2];
    const int n_gqa     = n_head/n_head_kv;
    const int n_sel     = mode == GGML_ADAMAS_SELECT_HEAD ? n_head : n_head_kv;

    const std::vector<uint8_t> qd = decode_all(qc);
    const std::vector<uint8_t> kd = decode_all(kc);

    select_ref r;
    r.idx.assign((size_t) budget*n_sel*n_q*ns, -1);
    r.dist.assign((size_t) n_kv*n_sel*n_q*ns, 0);
    std::vector<std::pair<int, int>> ranked; // (distance, cell)
    std::vector<char> listed(n_kv);
    for (int s = 0; s < ns; s++) {
        for (int iq = 0; iq < n_q; iq++) {
            // the candidates of this query: its list's cells, or every cell
            std::fill(listed.begin(), listed.end(), cells == nullptr);
            for (int64_t j = 0; cells && j < cells->ne[0]; j++) {
                int32_t c;
                memcpy(&c, elem_ptr(cells, j, iq, s, 0), sizeof(c));
                if (c >= 0) {
                    listed[c] = 1;
                }
            }
            for (int u = 0; u < n_sel; u++) {
                int32_t * dist = r.dist.data() + (((size_t) s*n_q + iq)*n_sel + u)*n_kv;
                ranked.clear();
                for (int c = 0; c < n_kv; c++) {
                    int dsum = 0;
                    if (mode == GGML_ADAMAS_SELECT_HEAD) {
                        const int g = u/n_gqa;
                        dsum = l1(qd.data() + (((size_t) s*n_q + iq)*n_head + u)*D, kd.data() + (((size_t) s*n_kv + c)*n_head_kv + g)*D, D);
                    } else {
                        for (int h = u*n_gqa; h < (u + 1)*n_gqa; h++) {
                            dsum += l1(qd.data() + (((size_t) s*n_q + iq)*n_head + h)*D, kd.data() + (((size_t) s*n_kv + c)*n_head_kv + u)*D, D);
                        }
                    }
                    dist[c] = dsum;
                    const double m = mask_value(mask, c, iq, s);
                    if (listed[c] && m != -INFINITY) {
                        ranked.emplace_back(m == INFINITY ? -1 : dsum, c); // +INF: ahead of every ranked cell
                    }
                }
                std::sort(ranked.begin(), ranked.end(), [](const std::pair<int, int> & x, const std::pair<int, int> & y) {
                    return x.first != y.first ? x.first < y.first : x.second > y.second;
                });
                int32_t * out = r.idx.data() + (((size_t) s*n_q + iq)*n_sel + u)*budget;
                for (int j = 0; j < budget && j < (int) ranked.size(); j++) {
                    out[j] = ranked[j].second;
                }
            }
        }
    }
    return r;
}

// first difference between a select result and the reference, "" if none
static std::string select_diff(const ggml_tensor * res, const select_ref & r, int n_kv) {
    const int budget = (int) res->ne[0];
    const int n_sel  = (int) res->ne[1];
    const int n_q    = (int) res->ne[2];
    const int ns     = (int) res->ne[3];
    for (int s = 0; s < ns; s++) {
        for (int iq = 0; iq < n_q; iq++) {
            for (int u = 0; u < n_sel; u++) {
                const size_t row = ((size_t) s*n_q + iq)*n_sel + u;
                const int32_t * dist = r.dist.data() + row*n_kv;
                for (int j = 0; j < budget; j++) {
                    int32_t got;
                    memcpy(&got, elem_ptr(res, j, u, iq, s), sizeof(got));
                    const int32_t exp = r.idx[row*budget + j];
                    if (got != exp) {
                        return strfmt("stream %d query %d unit %d slot %d: expected cell %d (dist %d), got %d (dist %s)",
                            s, iq, u, j, exp, exp >= 0 ? dist[exp] : -1, got,
                            got >= 0 && got < n_kv ? strfmt("%d", dist[got]).c_str() : "n/a");
                    }
                }
            }
        }
    }
    return "";
}

// ---- select tests ---------------------------------------------------------------------------------------

struct select_case {
    int D, n_head_kv, n_gqa, n_kv, n_q, ns, budget;
    ggml_adamas_select_mode mode;
    int kv_size;         // > 0: kc is a strided view of a code cache [n_head_kv*D/4, kv_size, ns]; 0: contiguous
    ggml_type mask_type; // GGML_TYPE_COUNT: no mask
    bool mask_bcast;     // mask ne[3] == 1 (one mask for every stream)
    int n_q_pad;         // mask ne[1] >= n_q
    double hole_frac;    // fraction of -INF cells
    double full_frac;    // fraction of fully masked query rows
    int ties;            // 0: random key codes; 1: drawn from a pool of 2-3 vectors per KV head; 2: all identical
    int n_threads;
    int list = 0;        // candidate lists (select_cells): 0 none; 1 a random part of the cells per query (some
                         // visible ones left out); 2 every visible cell and some hidden ones (equals no list)
    double forced_frac = 0.0; // fraction of +INF (always chosen) mask cells

    std::string str() const {
        return strfmt("select [D=%d n_head_kv=%d gqa=%d n_kv=%d n_q=%d ns=%d budget=%d %s kv_size=%d mask=%s%s pad=%d holes=%.2f full=%.2f ties=%d threads=%d list=%d forced=%.2f]",
            D, n_head_kv, n_gqa, n_kv, n_q, ns, budget, mode == GGML_ADAMAS_SELECT_HEAD ? "HEAD" : "GROUP", kv_size,
            type_name(mask_type), mask_type != GGML_TYPE_COUNT && mask_bcast ? "(bcast)" : "", n_q_pad, hole_frac, full_frac, ties, n_threads,
            list, forced_frac);
    }
};

static void fill_random_bytes(ggml_tensor * t) {
    uint8_t * p = (uint8_t *) t->data;
    for (size_t i = 0; i < ggml_nbytes(t); i++) {
        p[i] = (uint8_t) irand(0, 255);
    }
}

// KQ-style mask [n_kv, n_q_pad, 1, ns or 1]: random -INF holes, fully masked rows, and finite values
// (0 mostly, some negative like ALiBi) that count as visible; int_values: finite values in {0, -1, -2};
// huge_frac: fraction of the most negative finite value of the type (still visible, for select only: added to
// a logit in float it would swamp the logit)
static ggml_tensor * make_mask(ggml_context * ctx, ggml_type type, int n_kv, int n_q_pad, int ns, bool bcast,
                               double hole_frac, double full_frac, bool int_values = false, double huge_frac = 0.0) {
    if (type == GGML_TYPE_COUNT) {
        return nullptr;
    }
    ggml_tensor * m = ggml_new_tensor_4d(ctx, type, n_kv, n_q_pad, 1, bcast ? 1 : ns);
    for (int64_t s = 0; s < m->ne[3]; s++) {
        for (int64_t iq = 0; iq < n_q_pad; iq++) {
            const bool full = urand() < full_frac;
            for (int64_t c = 0; c < n_kv; c++) {
                float v = 0.0f;
                if (full || urand() < hole_frac) {
                    v = -INFINITY;
                } else if (urand() < huge_frac) {
                    v = type == GGML_TYPE_F16 ? -65504.0f : -FLT_MAX;
                } else if (urand() < 0.3) {
                    v = int_values ? (float) -irand(1, 2) : (float) (-3.0*urand());
                }
                set_f(m, c, iq, 0, s, v);
            }
        }
    }
    return m;
}

// key codes [D/4, n_head_kv, n_kv, ns], contiguous or as a strided view of a larger code cache
static ggml_tensor * make_key_codes(ggml_context * ctx, int D, int n_head_kv, int n_kv, int ns, int kv_size, int ties) {
    ggml_tensor * kc;
    if (kv_size > 0) {
        ggml_tensor * cache = ggml_new_tensor_3d(ctx, GGML_TYPE_I8, (int64_t) n_head_kv*D/4, kv_size, ns);
        fill_random_bytes(cache); // cells >= n_kv hold junk the op must not read as candidates
        kc = ggml_view_4d(ctx, cache, D/4, n_head_kv, n_kv, ns, D/4, cache->nb[1], cache->nb[2], 0);
    } else {
        kc = ggml_new_tensor_4d(ctx, GGML_TYPE_I8, D/4, n_head_kv, n_kv, ns);
    }
    const int n_pool = ties == 0 ? 0 : ties == 1 ? irand(2, 3) : 1;
    std::vector<uint8_t> pool((size_t) n_pool*D/4);
    for (int s = 0; s < ns; s++) {
        for (int g = 0; g < n_head_kv; g++) {
            for (auto & b : pool) {
                b = (uint8_t) irand(0, 255);
            }
            for (int c = 0; c < n_kv; c++) {
                uint8_t * p = (uint8_t *) elem_ptr(kc, 0, g, c, s);
                if (n_pool == 0) {
                    for (int i = 0; i < D/4; i++) {
                        p[i] = (uint8_t) irand(0, 255);
                    }
                } else {
                    memcpy(p, pool.data() + (size_t) irand(0, n_pool - 1)*D/4, D/4);
                }
            }
        }
    }
    return kc;
}

// Candidate lists [n_cand, n_q, ns] for select_cells (see select_case::list): increasing cells, -1 entries
// between them and after them (a padded length).
static ggml_tensor * make_cells(ggml_context * ctx, const ggml_tensor * mask, int kind, int n_kv, int n_q, int ns) {
    std::vector<std::vector<int32_t>> rows((size_t) n_q*ns);
    size_t n_max = 1;
    for (int s = 0; s < ns; s++) {
        for (int iq = 0; iq < n_q; iq++) {
            auto & row = rows[(size_t) s*n_q + iq];
            for (int c = 0; c < n_kv; c++) {
                if (urand() < 0.1) {
                    row.push_back(-1);
                }
                const bool visible = mask_value(mask, c, iq, s) != -INFINITY;
                if (kind == 1 ? urand() < 0.6 : visible || urand() < 0.3) {
                    row.push_back(c);
                }
            }
            n_max = std::max(n_max, row.size());
        }
    }
    ggml_tensor * cells = ggml_new_tensor_3d(ctx, GGML_TYPE_I32, (int64_t) n_max + irand(0, 40), n_q, ns);
    for (int s = 0; s < ns; s++) {
        for (int iq = 0; iq < n_q; iq++) {
            const auto & row = rows[(size_t) s*n_q + iq];
            for (int64_t j = 0; j < cells->ne[0]; j++) {
                const int32_t c = j < (int64_t) row.size() ? row[j] : -1;
                memcpy(elem_ptr(cells, j, iq, s, 0), &c, sizeof(c));
            }
        }
    }
    return cells;
}

// +INF (always chosen) at a fraction of the visible cells of a mask
static void add_forced(ggml_tensor * mask, double frac) {
    for (int64_t s = 0; mask && frac > 0.0 && s < mask->ne[3]; s++) {
        for (int64_t iq = 0; iq < mask->ne[1]; iq++) {
            for (int64_t c = 0; c < mask->ne[0]; c++) {
                if (get_f(mask, c, iq, 0, s) != -INFINITY && urand() < frac) {
                    set_f(mask, c, iq, 0, s, INFINITY);
                }
            }
        }
    }
}

static void test_select(const select_case & tc) {
    const int n_head = tc.n_head_kv*tc.n_gqa;
    const int n_sel  = tc.mode == GGML_ADAMAS_SELECT_HEAD ? n_head : tc.n_head_kv;
    ggml_context * ctx = new_ctx((size_t) n_head*tc.D/4*tc.n_q*tc.ns + (size_t) tc.n_head_kv*tc.D/4*std::max(tc.n_kv, tc.kv_size)*tc.ns +
                                 (size_t) tc.n_kv*tc.n_q_pad*tc.ns*4 + (size_t) 2*tc.budget*n_sel*tc.n_q*tc.ns*4 +
                                 (tc.list ? (size_t) 2*(tc.n_kv + 64)*tc.n_q*tc.ns*4 : 0));

    ggml_tensor * qc = ggml_new_tensor_4d(ctx, GGML_TYPE_I8, tc.D/4, n_head, tc.n_q, tc.ns);
    fill_random_bytes(qc);
    ggml_tensor * kc   = make_key_codes(ctx, tc.D, tc.n_head_kv, tc.n_kv, tc.ns, tc.kv_size, tc.ties);
    ggml_tensor * mask = make_mask(ctx, tc.mask_type, tc.n_kv, tc.n_q_pad, tc.ns, tc.mask_bcast, tc.hole_frac, tc.full_frac,
                                   false, 0.05);
    add_forced(mask, tc.forced_frac);
    ggml_tensor * cells = tc.list ? make_cells(ctx, mask, tc.list, tc.n_kv, tc.n_q, tc.ns) : nullptr;

    ggml_tensor * res = cells ? ggml_adamas_select_cells(ctx, qc, kc, mask, cells, tc.budget, tc.mode)
                              : ggml_adamas_select(ctx, qc, kc, mask, tc.budget, tc.mode);
    // a list that holds every visible cell: the same result as no list, from the op itself
    ggml_tensor * res_all = tc.list == 2 ? ggml_adamas_select(ctx, qc, kc, mask, tc.budget, tc.mode) : nullptr;
    ggml_cgraph * gf = res_all ? build(ctx, {res, res_all}) : build(ctx, {res});
    poison(res, 0x7f); // 0x7f7f7f7f is neither a cell nor -1
    if (res_all) {
        poison(res_all, 0x7e);
    }
    if (!compute(gf, tc.n_threads)) {
        check(false, tc.str(), "graph compute failed");
    } else {
        const select_ref  r = ref_select(qc, kc, mask, tc.budget, tc.mode, cells);
        const std::string d = select_diff(res, r, tc.n_kv);
        check(d.empty(), tc.str(), d);
        if (res_all) {
            check(memcmp(res->data, res_all->data, ggml_nbytes(res)) == 0, tc.str() + " (list of every visible cell vs no list)",
                  "the results differ");
        }
    }
    ggml_free(ctx);
}

// ---- reference attention --------------------------------------------------------------------------------

// one row of n elements of K or V, dequantized by our own code from the stored bytes
static void dequant_row(ggml_type type, const uint8_t * p, int n, double * out) {
    switch (type) {
        case GGML_TYPE_F32:
            for (int i = 0; i < n; i++) {
                float v;
                memcpy(&v, p + 4*i, 4);
                out[i] = v;
            }
            break;
        case GGML_TYPE_F16:
            for (int i = 0; i < n; i++) {
                ggml_fp16_t h;
                memcpy(&h, p + 2*i, 2);
                out[i] = ggml_fp16_to_fp32(h);
            }
            break;
        case GGML_TYPE_Q8_0: // blocks of 32: f16 d, int8 q[32]; x = d*q
            for (int b = 0; b < n/32; b++) {
                const uint8_t * blk = p + (size_t) b*34;
                ggml_fp16_t dh;
                memcpy(&dh, blk, 2);
                const double d = ggml_fp16_to_fp32(dh);
                for (int j = 0; j < 32; j++) {
                    out[b*32 + j] = d*(double) (int8_t) blk[2 + j];
                }
            }
            break;
        case GGML_TYPE_Q4_0: // blocks of 32: f16 d, 16 bytes; low nibbles elements 0..15, high 16..31; x = d*(q - 8)
            for (int b = 0; b < n/32; b++) {
                const uint8_t * blk = p + (size_t) b*18;
                ggml_fp16_t dh;
                memcpy(&dh, blk, 2);
                const double d = ggml_fp16_to_fp32(dh);
                for (int j = 0; j < 16; j++) {
                    out[b*32 + j]      = d*((int) (blk[2 + j] & 0x0f) - 8);
                    out[b*32 + j + 16] = d*((int) (blk[2 + j] >> 4) - 8);
                }
            }
            break;
        default:
            GGML_ABORT("dequant_row: type not in the test");
    }
}

// out: [Dv, n_head, n_q, ns]; idx: dense [budget, n_idx, n_q, ns]
static std::vector<double> ref_attn(const ggml_tensor * q, const ggml_tensor * k, const ggml_tensor * v,
                                    const ggml_tensor * mask, const std::vector<int32_t> & idx, int budget, int n_idx,
                                    float scale, float softcap, int n_keep = 0, int * n_unclear = nullptr,
                                    int n_lead = 0) {
    const int D         = (int) q->ne[0];
    const int n_q       = (int) q->ne[1];
    const int n_head    = (int) q->ne[2];
    const int ns        = (int) q->ne[3];
    const int Dv        = (int) v->ne[0];
    const int n_head_kv = (int) k->ne[2];
    const int n_gqa     = n_head/n_head_kv;

    std::vector<double> out((size_t) Dv*n_head*n_q*ns, 0.0);
    std::vector<double> qr(D), kr(D), vr(Dv), logit(budget);
    for (int s = 0; s < ns; s++) {
        for (int iq = 0; iq < n_q; iq++) {
            for (int h = 0; h < n_head; h++) {
                const int g  = h/n_gqa;
                const int hs = n_idx == n_head ? h : g;
                const int32_t * list = idx.data() + (((size_t) s*n_q + iq)*n_idx + hs)*budget;
                for (int d = 0; d < D; d++) {
                    qr[d] = get_f(q, d, iq, h, s);
                }
                double lmax = -INFINITY;
                for (int j = 0; j < budget; j++) {
                    logit[j] = -INFINITY;
                    const int c = list[j];
                    if (c < 0) {
                        continue;
                    }
                    const double m = mask_value(mask, c, iq, s);
                    if (m == -INFINITY) {
                        continue;
                    }
                    dequant_row(k->type, (const uint8_t *) elem_ptr(k, 0, c, g, s), D, kr.data());
                    double dot = 0.0;
                    for (int d = 0; d < D; d++) {
                        dot += qr[d]*kr[d];
                    }
                    double l = dot*(double) scale;
                    if (softcap > 0.0f) {
                        l = (double) softcap*std::tanh(l/(double) softcap);
                    }
                    logit[j] = l + m;
                    lmax = std::max(lmax, logit[j]);
                }
                if (lmax == -INFINITY) {
                    continue; // nothing visible: 0
                }
                if (n_keep > 0) {
                    // the first n_lead slots, then the n_keep - n_lead largest logits of the others by (logit
                    // desc, slot asc); the rest leave the softmax
                    std::vector<int> order;
                    const int n_pick = n_keep - n_lead;
                    for (int j = n_lead; j < budget; j++) {
                        if (logit[j] != -INFINITY) {
                            order.push_back(j);
                        }
                    }
                    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return logit[a] > logit[b]; });
                    if ((int) order.size() > n_pick) {
                        // a boundary closer than float rounding could go either way in the kernel's F32 logits
                        const double gap = n_pick > 0 ? logit[order[n_pick - 1]] - logit[order[n_pick]] : 1.0;
                        if (n_unclear && gap > 0.0 && gap < 1e-5*std::max(1.0, std::fabs(logit[order[n_pick]]))) {
                            (*n_unclear)++;
                        }
                        for (size_t i = n_pick; i < order.size(); i++) {
                            logit[order[i]] = -INFINITY;
                        }
                        lmax = -INFINITY;
                        for (int j = 0; j < budget; j++) {
                            lmax = std::max(lmax, logit[j]);
                        }
                    }
                }
                double * o = out.data() + (((size_t) s*n_q + iq)*n_head + h)*Dv;
                double sum = 0.0;
                for (int j = 0; j < budget; j++) {
                    if (logit[j] == -INFINITY) {
                        continue;
                    }
                    const double p = std::exp(logit[j] - lmax);
                    sum += p;
                    dequant_row(v->type, (const uint8_t *) elem_ptr(v, 0, list[j], g, s), Dv, vr.data());
                    for (int d = 0; d < Dv; d++) {
                        o[d] += p*vr[d];
                    }
                }
                for (int d = 0; d < Dv; d++) {
                    o[d] /= sum;
                }
            }
        }
    }
    return out;
}

// ---- attention tests ------------------------------------------------------------------------------------

// Relative tolerance (max |out - ref| over a row / max |ref| over that row) per K/V type pair. The kernel
// dequantizes K/V rows to F32 and accumulates in F32; the reference dequantizes the same stored bytes exactly,
// so quantization error is not part of the comparison and every type is held to F32 accumulation accuracy.
// Measured worst over ~300 seeds (up to ~1000 attended cells): f32 3.6e-6, f16 2.3e-6, q8_0 2.5e-6,
// q4_0 3.8e-6 (mixed pairs below 2e-6); the worst errors of a run are printed at its end.
static double attn_tolerance(ggml_type tk, ggml_type tv) {
    auto tol = [](ggml_type t) {
        switch (t) {
            case GGML_TYPE_F32:  return 1e-5;
            case GGML_TYPE_F16:  return 1e-5;
            case GGML_TYPE_Q8_0: return 1e-5;
            case GGML_TYPE_Q4_0: return 1e-5;
            default:             return 0.0;
        }
    };
    return std::max(tol(tk), tol(tv));
}

// worst relative error and the tolerance, per "K/V" type pair
static std::map<std::string, std::pair<double, double>> g_worst_err;
static int g_n_unclear = 0; // rerank cases skipped: a kept/dropped boundary within float rounding

struct attn_case {
    int D, Dv, n_head_kv, n_gqa, n_kv, n_q, ns, budget;
    ggml_type type_k, type_v;
    int kv_size;          // > 0: K/V are permuted views of caches [D*n_head_kv, kv_size, ns]; 0: contiguous
    bool idx_per_head;    // idx ne[1] == n_head (HEAD select) or n_head_kv (GROUP select)
    ggml_type mask_type;  // GGML_TYPE_COUNT: no mask
    bool mask_bcast;
    int n_q_pad;
    double hole_frac;
    double full_frac;
    float scale_factor;   // scale = scale_factor/sqrt(D)
    float softcap;
    bool q_permuted;      // q as llama.cpp passes it: a permuted view of [D, n_head, n_q, ns]
    int neg;              // -1 slots: 0 only as padding at the end, 1 also anywhere in the list
    double short_frac;    // fraction of lists shorter than min(budget, n_kv)
    bool integer_data;    // small integer q/k and scale 4: exact logits far beyond expf's range
    bool from_select;     // idx comes from ggml_adamas_select on random codes in the same graph
    int n_threads;
    int n_keep = 0;       // > 0: ggml_adamas_attn_rerank keeping the n_keep highest logits of the list
    int n_lead = 0;       // with n_keep: its first n_lead slots kept whatever their logits

    std::string str() const {
        return strfmt("attn [D=%d Dv=%d n_head_kv=%d gqa=%d n_kv=%d n_q=%d ns=%d budget=%d K=%s V=%s kv_size=%d idx=%s mask=%s%s pad=%d holes=%.2f full=%.2f scale=%g/sqrt(D) softcap=%g q_perm=%d neg=%d short=%.2f int=%d select=%d threads=%d keep=%d lead=%d]",
            D, Dv, n_head_kv, n_gqa, n_kv, n_q, ns, budget, ggml_type_name(type_k), ggml_type_name(type_v), kv_size,
            idx_per_head ? "head" : "group", type_name(mask_type), mask_type != GGML_TYPE_COUNT && mask_bcast ? "(bcast)" : "", n_q_pad, hole_frac,
            full_frac, scale_factor, softcap, q_permuted, neg, short_frac, integer_data, from_select, n_threads, n_keep, n_lead);
    }
};

// K or V as ggml_flash_attn_ext reads them, [d, n_kv, n_head_kv, ns]; with kv_size > 0 a permuted view of a
// cache [d*n_head_kv, kv_size, ns], built like llama.cpp's get_k / get_v (V not transposed)
static ggml_tensor * make_kv(ggml_context * ctx, ggml_type type, int d, int n_kv, int n_head_kv, int ns, int kv_size,
                             bool integer_data) {
    ggml_tensor * buf;
    ggml_tensor * t;
    if (kv_size > 0) {
        buf = ggml_new_tensor_3d(ctx, type, (int64_t) d*n_head_kv, kv_size, ns);
        ggml_tensor * v4 = ggml_view_4d(ctx, buf, d, n_head_kv, n_kv, ns, ggml_row_size(type, d), buf->nb[1], buf->nb[2], 0);
        t = ggml_permute(ctx, v4, 0, 2, 1, 3);
    } else {
        buf = t = ggml_new_tensor_4d(ctx, type, d, n_kv, n_head_kv, ns);
    }
    const int64_t n_per_row = buf->ne[0];
    const int64_t nrows     = ggml_nrows(buf);
    std::vector<float> src((size_t) n_per_row*nrows);
    for (auto & x : src) {
        x = integer_data ? (float) irand(-3, 3) : (float) nrand();
    }
    if (type == GGML_TYPE_F32) {
        memcpy(buf->data, src.data(), src.size()*sizeof(float));
    } else if (type == GGML_TYPE_F16) {
        ggml_fp16_t * p = (ggml_fp16_t *) buf->data;
        for (size_t i = 0; i < src.size(); i++) {
            p[i] = ggml_fp32_to_fp16(src[i]);
        }
    } else {
        ggml_quantize_chunk(type, src.data(), buf->data, 0, nrows, n_per_row, nullptr);
    }
    return t;
}

static void test_attn(const attn_case & tc) {
    const int n_head = tc.n_head_kv*tc.n_gqa;
    const int n_idx  = tc.idx_per_head ? n_head : tc.n_head_kv;
    const int cells  = std::max(tc.n_kv, tc.kv_size);
    const int Dc     = 64; // code dimension of the select feeding the attention (from_select)
    ggml_context * ctx = new_ctx((size_t) tc.D*tc.n_q*n_head*tc.ns*4 +
                                 ggml_row_size(tc.type_k, tc.D)*cells*tc.n_head_kv*tc.ns +
                                 ggml_row_size(tc.type_v, tc.Dv)*cells*tc.n_head_kv*tc.ns +
                                 (size_t) tc.n_kv*tc.n_q_pad*tc.ns*4 + (size_t) tc.budget*n_idx*tc.n_q*tc.ns*4 +
                                 (size_t) tc.Dv*n_head*tc.n_q*tc.ns*4 +
                                 (size_t) Dc/4*(n_head*tc.n_q + tc.n_head_kv*tc.n_kv)*tc.ns);

    ggml_tensor * q;
    if (tc.q_permuted) {
        ggml_tensor * buf = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, tc.D, n_head, tc.n_q, tc.ns);
        q = ggml_permute(ctx, buf, 0, 2, 1, 3);
    } else {
        q = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, tc.D, tc.n_q, n_head, tc.ns);
    }
    for (int s = 0; s < tc.ns; s++) {
        for (int h = 0; h < n_head; h++) {
            for (int iq = 0; iq < tc.n_q; iq++) {
                for (int d = 0; d < tc.D; d++) {
                    set_f(q, d, iq, h, s, tc.integer_data ? (float) irand(-3, 3) : (float) nrand());
                }
            }
        }
    }
    ggml_tensor * k    = make_kv(ctx, tc.type_k, tc.D,  tc.n_kv, tc.n_head_kv, tc.ns, tc.kv_size, tc.integer_data);
    ggml_tensor * v    = make_kv(ctx, tc.type_v, tc.Dv, tc.n_kv, tc.n_head_kv, tc.ns, tc.kv_size, false);
    ggml_tensor * mask = make_mask(ctx, tc.mask_type, tc.n_kv, tc.n_q_pad, tc.ns, tc.mask_bcast, tc.hole_frac, tc.full_frac,
                                   tc.integer_data);

    // integer data: logits 4*q.k are exact in float whatever the summation order, and reach a few hundred
    // (with rerank a small scale instead: exact ties whose weights are not negligible test the tie rule)
    const float scale = tc.integer_data ? (tc.n_keep > 0 ? 0.0625f : 4.0f) : tc.scale_factor/std::sqrt((float) tc.D);

    std::vector<int32_t> idx_ref((size_t) tc.budget*n_idx*tc.n_q*tc.ns, -1);
    ggml_tensor * idx;
    select_ref sel_ref;
    if (tc.from_select) {
        const ggml_adamas_select_mode mode = tc.idx_per_head ? GGML_ADAMAS_SELECT_HEAD : GGML_ADAMAS_SELECT_GROUP;
        ggml_tensor * qc = ggml_new_tensor_4d(ctx, GGML_TYPE_I8, Dc/4, n_head, tc.n_q, tc.ns);
        fill_random_bytes(qc);
        ggml_tensor * kc = make_key_codes(ctx, Dc, tc.n_head_kv, tc.n_kv, tc.ns, 0, 0);
        idx     = ggml_adamas_select(ctx, qc, kc, mask, tc.budget, mode);
        sel_ref = ref_select(qc, kc, mask, tc.budget, mode);
        idx_ref = sel_ref.idx;
    } else {
        // random distinct cells; some lists shorter (padded with -1), -1 slots anywhere when neg == 1
        idx = ggml_new_tensor_4d(ctx, GGML_TYPE_I32, tc.budget, n_idx, tc.n_q, tc.ns);
        std::vector<int32_t> perm(tc.n_kv);
        for (size_t l = 0; l < idx_ref.size()/tc.budget; l++) {
            int32_t * list = idx_ref.data() + l*tc.budget;
            int n = std::min(tc.budget, tc.n_kv);
            if (urand() < tc.short_frac) {
                n = irand(0, n);
            }
            for (int i = 0; i < tc.n_kv; i++) {
                perm[i] = i;
            }
            for (int i = 0; i < n; i++) {
                std::swap(perm[i], perm[irand(i, tc.n_kv - 1)]);
                list[i] = perm[i];
            }
            if (tc.neg == 1) {
                std::shuffle(list, list + tc.budget, g_rng);
            }
        }
        memcpy(idx->data, idx_ref.data(), idx_ref.size()*sizeof(int32_t));
    }

    const int n_keep = std::min(tc.n_keep, tc.budget); // cases that shrink the budget after drawing n_keep
    const int n_lead = std::min(tc.n_lead, n_keep);
    ggml_tensor * out = n_keep > 0 ? ggml_adamas_attn_rerank(ctx, q, k, v, mask, idx, scale, tc.softcap, n_keep, n_lead)
                                      : ggml_adamas_attn(ctx, q, k, v, mask, idx, scale, tc.softcap);
    ggml_cgraph * gf = build(ctx, {out});
    poison(out, 0xff); // NaN
    if (tc.from_select) {
        poison(idx, 0x7f);
    }
    if (!compute(gf, tc.n_threads)) {
        check(false, tc.str(), "graph compute failed");
        ggml_free(ctx);
        return;
    }
    if (tc.from_select) {
        const std::string d = select_diff(idx, sel_ref, tc.n_kv);
        check(d.empty(), tc.str() + " (its select)", d);
    }

    int n_unclear = 0;
    const std::vector<double> ref = ref_attn(q, k, v, mask, idx_ref, tc.budget, n_idx, scale, tc.softcap, n_keep, &n_unclear, n_lead);
    if (n_unclear > 0) {
        // inputs whose kept set depends on float rounding: not a check of the kernel (rare; counted)
        g_n_unclear++;
        ggml_free(ctx);
        return;
    }
    const double tol = attn_tolerance(tc.type_k, tc.type_v);
    const std::string key = strfmt("%s/%s", ggml_type_name(tc.type_k), ggml_type_name(tc.type_v));
    double worst = 0.0;
    std::string detail;
    for (int s = 0; s < tc.ns; s++) {
        for (int iq = 0; iq < tc.n_q; iq++) {
            for (int h = 0; h < n_head; h++) {
                const double * r = ref.data() + (((size_t) s*tc.n_q + iq)*n_head + h)*tc.Dv;
                double rmax = 0.0, emax = 0.0;
                int dworst = 0;
                bool bad = false;
                for (int d = 0; d < tc.Dv; d++) {
                    const double g = get_f(out, d, h, iq, s);
                    const double e = std::fabs(g - r[d]);
                    rmax = std::max(rmax, std::fabs(r[d]));
                    if (std::isnan(e)) { // NaN (the poison, or a broken softmax) fails the row
                        if (!bad) {
                            dworst = d;
                        }
                        bad = true;
                    } else if (e > emax && !bad) {
                        emax   = e;
                        dworst = d;
                    }
                }
                const double rel = emax/std::max(1e-30, rmax);
                if (!bad) {
                    worst = std::max(worst, rel);
                }
                if ((bad || !(rel <= tol)) && detail.empty()) {
                    detail = strfmt("stream %d query %d head %d: max|out-ref| = %.3g, max|ref| = %.3g (rel %.3g > %.1g); dim %d expected %.9g got %.9g",
                        s, iq, h, bad ? NAN : emax, rmax, bad ? NAN : rel, tol, dworst, r[dworst], get_f(out, dworst, h, iq, s));
                }
            }
        }
    }
    auto & w = g_worst_err[key];
    w.first  = std::max(w.first, worst);
    w.second = tol;
    check(detail.empty(), tc.str(), detail.empty() ? strfmt("worst rel err %.3g", worst) : detail);
    ggml_free(ctx);
}

// ---- decode-step pipeline ------------------------------------------------------------------------------

// As llama.cpp chains them in one graph: new keys encoded into the code cache (set_rows form), the query
// encoded, and select reading the cache through a view of the set_rows result, so it must see the new codes
// (graph order) as well as the old ones.
struct pipeline_case {
    int D, n_head_kv, n_gqa, kv_size, n_kv, n_new, n_q, budget;
    ggml_adamas_thr_mode thr_mode;
    float thr;
    ggml_adamas_select_mode mode;
    int n_threads;

    std::string str() const {
        return strfmt("pipeline [D=%d n_head_kv=%d gqa=%d kv_size=%d n_kv=%d n_new=%d n_q=%d budget=%d %s thr=%g %s threads=%d]",
            D, n_head_kv, n_gqa, kv_size, n_kv, n_new, n_q, budget, thr_mode == GGML_ADAMAS_THR_FIXED ? "FIXED" : "RMS",
            thr, mode == GGML_ADAMAS_SELECT_HEAD ? "HEAD" : "GROUP", n_threads);
    }
};

static void test_pipeline(const pipeline_case & tc) {
    const int n_head = tc.n_head_kv*tc.n_gqa;
    const int cs     = tc.D/4;
    const size_t bytes = (size_t) 2*tc.n_head_kv*cs*tc.kv_size + (size_t) 4*tc.D*(tc.n_head_kv*tc.n_new + n_head*tc.n_q) +
                         (size_t) 2*n_head*cs*tc.n_q + 8*tc.n_new + (size_t) 2*tc.n_kv*tc.n_q + (size_t) 4*tc.budget*n_head*tc.n_q;
    ggml_context * ctx = new_ctx(bytes);

    ggml_tensor * cache = ggml_new_tensor_2d(ctx, GGML_TYPE_I8, (int64_t) tc.n_head_kv*cs, tc.kv_size);
    fill_random_bytes(cache); // codes of earlier tokens
    std::vector<uint8_t> expect_cache((uint8_t *) cache->data, (uint8_t *) cache->data + ggml_nbytes(cache));

    ggml_tensor * q_cur = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, tc.D, n_head, tc.n_q);
    std::vector<uint8_t> expect_qc((size_t) n_head*cs*tc.n_q);
    for (int iq = 0; iq < tc.n_q; iq++) {
        for (int h = 0; h < n_head; h++) {
            const encode_ref r = draw_encode_row(q_cur, h, iq, 0, tc.thr_mode, tc.thr, false, 1.0, false);
            pack_codes(r.code.data(), tc.D, expect_qc.data() + ((size_t) iq*n_head + h)*cs);
        }
    }
    ggml_tensor * k_cur = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, tc.D, tc.n_head_kv, tc.n_new);
    ggml_tensor * idxs  = ggml_new_tensor_1d(ctx, GGML_TYPE_I64, tc.n_new);
    std::vector<int64_t> cells(tc.n_kv);
    for (int i = 0; i < tc.n_kv; i++) {
        cells[i] = i;
    }
    std::shuffle(cells.begin(), cells.end(), g_rng);
    for (int i = 0; i < tc.n_new; i++) {
        ((int64_t *) idxs->data)[i] = cells[i];
        for (int g = 0; g < tc.n_head_kv; g++) {
            encode_ref r;
            if (i == 0) {
                // the first new key equals the first query of its group's first head: distance 0 there, so
                // a select that reads the cache before the write (or the old codes) cannot pass
                std::vector<double> x(tc.D);
                for (int d = 0; d < tc.D; d++) {
                    x[d] = set_f(k_cur, d, g, i, 0, (float) get_f(q_cur, d, g*tc.n_gqa, 0, 0));
                }
                r = ref_encode(x, tc.thr_mode, tc.thr, false);
            } else {
                r = draw_encode_row(k_cur, g, i, 0, tc.thr_mode, tc.thr, false, 1.0, true);
            }
            pack_codes(r.code.data(), tc.D, expect_cache.data() + cells[i]*cache->nb[1] + (size_t) g*cs);
        }
    }
    ggml_tensor * mask = make_mask(ctx, GGML_TYPE_F16, tc.n_kv, tc.n_q, 1, false, 0.1, 0.0);
    set_f(mask, cells[0], 0, 0, 0, 0.0f);

    ggml_tensor * kc_all = ggml_adamas_encode_set_rows(ctx, cache, k_cur, idxs, tc.thr_mode, tc.thr, false);
    ggml_tensor * kc     = ggml_view_4d(ctx, kc_all, cs, tc.n_head_kv, tc.n_kv, 1, cs, kc_all->nb[1], kc_all->nb[1]*tc.kv_size, 0);
    ggml_tensor * qc     = ggml_adamas_encode(ctx, q_cur, tc.thr_mode, tc.thr, false);
    ggml_tensor * sel    = ggml_adamas_select(ctx, qc, kc, mask, tc.budget, tc.mode);
    ggml_cgraph * gf = build(ctx, {sel});
    poison(qc, 0x00);
    poison(sel, 0x7f);
    if (!compute(gf, tc.n_threads)) {
        check(false, tc.str(), "graph compute failed");
        ggml_free(ctx);
        return;
    }

    // the reference selection runs on the expected codes, in tensors of their own
    ggml_tensor * qc_ref = ggml_new_tensor_4d(ctx, GGML_TYPE_I8, cs, n_head, tc.n_q, 1);
    memcpy(qc_ref->data, expect_qc.data(), expect_qc.size());
    ggml_tensor * cache_ref = ggml_new_tensor_2d(ctx, GGML_TYPE_I8, (int64_t) tc.n_head_kv*cs, tc.kv_size);
    memcpy(cache_ref->data, expect_cache.data(), expect_cache.size());
    ggml_tensor * kc_ref = ggml_view_4d(ctx, cache_ref, cs, tc.n_head_kv, tc.n_kv, 1, cs, cache_ref->nb[1], cache_ref->nb[1]*tc.kv_size, 0);
    const select_ref r = ref_select(qc_ref, kc_ref, mask, tc.budget, tc.mode);

    std::string detail;
    if (memcmp(qc->data, expect_qc.data(), expect_qc.size()) != 0) {
        detail = "query codes differ from the reference";
    } else if (memcmp(cache->data, expect_cache.data(), expect_cache.size()) != 0) {
        detail = "code cache differs from the reference";
    } else {
        detail = select_diff(sel, r, tc.n_kv);
    }
    check(detail.empty(), tc.str(), detail);
    ggml_free(ctx);
}

// ---- case lists -----------------------------------------------------------------------------------------

static const std::vector<int> k_dims = {32, 64, 128, 256};

static void run_encode_tests() {
    int n = 0;
    for (int D : k_dims) {
        for (ggml_type type : {GGML_TYPE_F32, GGML_TYPE_F16}) {
            for (ggml_adamas_thr_mode mode : {GGML_ADAMAS_THR_FIXED, GGML_ADAMAS_THR_RMS}) {
                for (bool skip : {false, true}) {
                    encode_case tc;
                    tc.D         = D;
                    tc.n_head    = pick<int>({1, 2, 3, 4, 8});
                    tc.n_rows    = irand(1, 17);
                    tc.ne3       = irand(1, 2);
                    tc.type      = type;
                    tc.mode      = mode;
                    tc.scale     = pick<double>({0.05, 1.0, 12.0});
                    // FIXED: a threshold near the median |y| so that all four buckets occur (the paper's
                    // t = 10 with inputs of scale 12); RMS: the factor c
                    tc.thr       = mode == GGML_ADAMAS_THR_FIXED ? (float) (tc.scale == 12.0 ? 10.0 : 0.67*tc.scale)
                                                                  : (float) pick<double>({0.5, 0.67, 1.0, 1.5});
                    tc.skip_wht  = skip;
                    tc.permuted  = n % 5 == 2;
                    tc.spikes    = n % 3 == 1;
                    tc.n_threads = 1 + n % 3;
                    test_encode(tc);
                    n++;
                }
            }
        }
    }
    // many rows and heads over 3 threads (uneven split), and a single row over 3 threads
    test_encode({128, 8, 64, 1, GGML_TYPE_F32, GGML_ADAMAS_THR_RMS,   1.0f, false, 1.0, false, true,  3});
    test_encode({256, 1,  1, 1, GGML_TYPE_F16, GGML_ADAMAS_THR_FIXED, 0.7f, false, 1.0, false, false, 3});
    test_encode({64,  5, 33, 2, GGML_TYPE_F16, GGML_ADAMAS_THR_RMS,   0.5f, true,  3.0, true,  true,  2});

    n = 0;
    for (int D : k_dims) {
        for (ggml_type idx_type : {GGML_TYPE_I64, GGML_TYPE_I32}) {
            set_rows_case tc;
            tc.D         = D;
            tc.n_head    = pick<int>({1, 2, 4, 8});
            tc.n_rows    = pick<int>({1, 7, 32});
            tc.n_cells   = 2*((tc.n_rows + irand(0, 100) + 1)/2);
            tc.type      = n % 2 ? GGML_TYPE_F16 : GGML_TYPE_F32;
            tc.idx_type  = idx_type;
            tc.mode      = n % 3 ? GGML_ADAMAS_THR_RMS : GGML_ADAMAS_THR_FIXED;
            tc.thr       = tc.mode == GGML_ADAMAS_THR_FIXED ? 0.67f : 1.0f;
            tc.skip_wht  = n % 4 == 3;
            tc.layout    = n % 3;
            tc.n_threads = 1 + n % 3;
            test_encode_set_rows(tc);
            n++;
        }
    }
    // every cell written (n_rows == n_cells)
    test_encode_set_rows({128, 4, 40, 40, GGML_TYPE_F32, GGML_TYPE_I64, GGML_ADAMAS_THR_RMS, 1.0f, false, 0, 3});
}

static select_case random_select_case(int D, int n_gqa, ggml_adamas_select_mode mode, int n) {
    select_case tc;
    tc.D          = D;
    tc.n_gqa      = n_gqa;
    tc.n_head_kv  = n_gqa == 8 ? irand(1, 2) : irand(1, 4);
    tc.mode       = mode;
    tc.n_kv       = pick<int>({1, 5, 17, 63, 64, 65, 200, 257, 700, 1500, 3000});
    tc.budget     = pick<int>({1, 16, 64, 256, tc.n_kv + irand(1, 50)});
    const bool big = tc.n_kv > 1000;
    tc.n_q        = big ? 1 : pick<int>({1, 1, 2, 4});
    tc.ns         = big ? irand(1, 2) : pick<int>({1, 1, 2, 3});
    tc.kv_size    = urand() < 0.5 ? tc.n_kv + irand(0, 300) : 0;
    tc.mask_type  = pick<ggml_type>({GGML_TYPE_COUNT, GGML_TYPE_F16, GGML_TYPE_F16, GGML_TYPE_F32});
    tc.mask_bcast = tc.ns > 1 && urand() < 0.3;
    tc.n_q_pad    = urand() < 0.5 ? tc.n_q : tc.n_q + irand(1, 63);
    tc.hole_frac  = pick<double>({0.0, 0.1, 0.5, 0.95});
    tc.full_frac  = urand() < 0.2 ? 0.3 : 0.0;
    tc.ties       = pick<int>({0, 0, 0, 1, 2});
    tc.n_threads  = 1 + n % 3;
    return tc;
}

static void run_select_tests() {
    int n = 0;
    // every head dimension x GQA ratio x mode, twice, other parameters random
    for (int rep = 0; rep < 2; rep++) {
        for (int D : k_dims) {
            for (int n_gqa : {1, 3, 4, 8}) {
                for (ggml_adamas_select_mode mode : {GGML_ADAMAS_SELECT_HEAD, GGML_ADAMAS_SELECT_GROUP}) {
                    test_select(random_select_case(D, n_gqa, mode, n++));
                }
            }
        }
    }
    // n_kv around the budget, and from 1 to well above it
    for (int budget : {1, 16, 64, 256}) {
        for (int n_kv : {1, budget - 1, budget, budget + 1, 2*budget + 3, 3000}) {
            if (n_kv < 1) {
                continue;
            }
            select_case tc = random_select_case(pick<int>(k_dims), pick<int>({1, 3, 4, 8}),
                                                n % 2 ? GGML_ADAMAS_SELECT_GROUP : GGML_ADAMAS_SELECT_HEAD, n);
            tc.n_kv    = n_kv;
            tc.budget  = budget;
            tc.kv_size = n % 3 == 0 ? n_kv + 17 : 0;
            tc.n_q     = n_kv > 1000 ? 1 : tc.n_q;
            tc.ns      = n_kv > 1000 ? 1 : tc.ns;
            tc.n_q_pad = std::max(tc.n_q_pad, tc.n_q);
            test_select(tc);
            n++;
        }
    }
    // forced ties: a pool of 2-3 key code vectors, and all keys identical (the cell index decides alone)
    for (int ties : {1, 2}) {
        for (ggml_adamas_select_mode mode : {GGML_ADAMAS_SELECT_HEAD, GGML_ADAMAS_SELECT_GROUP}) {
            for (int budget : {1, 16, 100}) {
                select_case tc = random_select_case(pick<int>(k_dims), pick<int>({1, 3, 4, 8}), mode, n++);
                tc.ties   = ties;
                tc.n_kv   = pick<int>({budget - 1 > 0 ? budget - 1 : 1, budget + 1, 300});
                tc.budget = budget;
                tc.kv_size = tc.kv_size > 0 ? tc.n_kv + irand(0, 100) : 0;
                tc.n_q     = 2;
                tc.n_q_pad = std::max(tc.n_q_pad, tc.n_q);
                tc.ns      = 1;
                test_select(tc);
            }
        }
    }
    // llama.cpp's shapes: strided views of a multi-stream code cache, per-stream F16 mask padded to 64 rows,
    // several query rows (a small prefill)
    test_select({128, 2, 4, 300,  3, 2, 64,  GGML_ADAMAS_SELECT_HEAD,  512,  GGML_TYPE_F16,   false, 64, 0.2, 0.0, 0, 3});
    test_select({128, 2, 4, 300,  3, 2, 64,  GGML_ADAMAS_SELECT_GROUP, 512,  GGML_TYPE_F16,   false, 64, 0.2, 0.0, 0, 2});
    test_select({64,  8, 1, 1000, 1, 1, 256, GGML_ADAMAS_SELECT_HEAD,  1024, GGML_TYPE_F16,   false, 1,  0.0, 0.0, 0, 2});
    // budget larger than everything visible; fully masked rows; everything masked; no mask at all
    test_select({32,  1, 3, 40,   4, 2, 64,  GGML_ADAMAS_SELECT_GROUP, 0,    GGML_TYPE_F32,   false, 4,  0.5, 0.5, 0, 3});
    test_select({64,  2, 1, 50,   2, 1, 8,   GGML_ADAMAS_SELECT_HEAD,  64,   GGML_TYPE_F16,   false, 2,  1.0, 0.0, 0, 2});
    test_select({256, 1, 8, 777,  1, 1, 128, GGML_ADAMAS_SELECT_GROUP, 0,    GGML_TYPE_COUNT, false, 1,  0.0, 0.0, 0, 1});
    // +INF (forced) cells ahead of the ranked ones
    for (ggml_adamas_select_mode mode : {GGML_ADAMAS_SELECT_HEAD, GGML_ADAMAS_SELECT_GROUP}) {
        select_case tc = random_select_case(pick<int>(k_dims), pick<int>({1, 3, 4, 8}), mode, n++);
        tc.mask_type   = GGML_TYPE_F16;
        tc.forced_frac = 0.05;
        test_select(tc);
    }
    // candidate lists (a unified cache: each query its own sequence's cells): random parts of the cells (lists
    // that skip visible cells), and every visible cell plus hidden ones (equal to no list); -1 entries between
    // and after; several queries and streams, masks with +INF cells, ties, budgets past the list
    for (int list : {1, 2}) {
        for (ggml_adamas_select_mode mode : {GGML_ADAMAS_SELECT_HEAD, GGML_ADAMAS_SELECT_GROUP}) {
            for (int rep = 0; rep < 4; rep++) {
                select_case tc = random_select_case(pick<int>(k_dims), pick<int>({1, 3, 4, 8}), mode, n++);
                tc.list        = list;
                tc.forced_frac = rep % 2 ? 0.03 : 0.0;
                tc.mask_type   = rep == 3 ? GGML_TYPE_F32 : rep == 2 && list == 1 ? GGML_TYPE_COUNT : GGML_TYPE_F16;
                tc.ties        = rep == 1 ? 1 : tc.ties;
                tc.n_q_pad     = std::max(tc.n_q_pad, tc.n_q);
                if (rep == 0) {
                    tc.n_q = 3;
                    tc.ns  = 2;
                    tc.n_q_pad = 8;
                    tc.mask_bcast = false;
                }
                test_select(tc);
            }
        }
    }
    test_select({128, 2, 4, 3000, 1, 1, 256, GGML_ADAMAS_SELECT_GROUP, 0, GGML_TYPE_F16, false, 1, 0.1, 0.0, 0, 3, 2, 0.01});
    test_select({64,  2, 4, 300,  4, 2, 500, GGML_ADAMAS_SELECT_HEAD,  0, GGML_TYPE_F16, false, 4, 0.3, 0.3, 1, 2, 1, 0.02});
}

static attn_case random_attn_case(int D, ggml_type type, int n, int n_gqa = 0) {
    attn_case tc;
    tc.D            = D;
    tc.Dv           = D;
    tc.n_gqa        = n_gqa > 0 ? n_gqa : pick<int>({1, 3, 4, 8});
    tc.n_head_kv    = tc.n_gqa == 8 ? irand(1, 2) : irand(1, 4);
    tc.n_kv         = pick<int>({1, 7, 64, 200, 513, 1000});
    tc.budget       = pick<int>({1, 16, 64, 256, tc.n_kv + irand(1, 40)});
    tc.n_q          = pick<int>({1, 1, 2, 3});
    tc.ns           = pick<int>({1, 1, 2});
    tc.type_k       = type;
    tc.type_v       = type;
    tc.kv_size      = urand() < 0.6 ? tc.n_kv + irand(0, 200) : 0;
    tc.idx_per_head = tc.n_gqa == 1 || urand() < 0.5;
    tc.mask_type    = pick<ggml_type>({GGML_TYPE_COUNT, GGML_TYPE_F16, GGML_TYPE_F16, GGML_TYPE_F32});
    tc.mask_bcast   = tc.ns > 1 && urand() < 0.3;
    tc.n_q_pad      = urand() < 0.5 ? tc.n_q : tc.n_q + irand(1, 63);
    tc.hole_frac    = pick<double>({0.0, 0.1, 0.5});
    tc.full_frac    = urand() < 0.15 ? 0.3 : 0.0;
    tc.scale_factor = (float) pick<double>({0.5, 1.0, 2.0});
    tc.softcap      = urand() < 0.3 ? (float) pick<double>({2.0, 30.0}) : 0.0f;
    tc.q_permuted   = urand() < 0.5;
    tc.neg          = urand() < 0.3 ? 1 : 0;
    tc.short_frac   = urand() < 0.3 ? 0.3 : 0.0;
    tc.integer_data = false;
    tc.from_select  = false;
    tc.n_threads    = 1 + n % 3;
    tc.n_keep       = urand() < 0.35 ? irand(1, tc.budget) : 0;
    return tc;
}

static void run_attn_tests() {
    int n = 0;
    const std::vector<ggml_type> types = {GGML_TYPE_F32, GGML_TYPE_F16, GGML_TYPE_Q8_0, GGML_TYPE_Q4_0};
    // every K/V type x head dimension, twice, each type with every GQA ratio, other parameters random
    const int gqas[4] = {1, 3, 4, 8};
    for (int rep = 0; rep < 2; rep++) {
        for (size_t it = 0; it < types.size(); it++) {
            for (size_t id = 0; id < k_dims.size(); id++) {
                test_attn(random_attn_case(k_dims[id], types[it], n++, gqas[(it + id + 2*rep) % 4]));
            }
        }
    }
    // the strided cache views of llama.cpp for each type: multi-stream caches, per-stream masks, a prefill
    for (ggml_type type : types) {
        attn_case tc = random_attn_case(128, type, n++);
        tc.n_head_kv = 2; tc.n_gqa = 4; tc.n_kv = 300; tc.kv_size = 512; tc.ns = 2; tc.n_q = 3;
        tc.budget = 64; tc.mask_type = GGML_TYPE_F16; tc.mask_bcast = false; tc.n_q_pad = 64; tc.q_permuted = true;
        tc.hole_frac = 0.2;
        test_attn(tc);
    }
    // mixed K/V types and Dv != D, each attending over a few dozen cells so that the mix matters
    {
        struct mix { int D, Dv; ggml_type tk, tv; };
        for (const mix & m : {mix{128, 128, GGML_TYPE_Q8_0, GGML_TYPE_F16}, mix{64, 64, GGML_TYPE_F16, GGML_TYPE_Q4_0},
                              mix{128, 64, GGML_TYPE_F32, GGML_TYPE_F32}, mix{64, 256, GGML_TYPE_Q8_0, GGML_TYPE_Q8_0}}) {
            attn_case tc = random_attn_case(m.D, m.tk, n++);
            tc.Dv        = m.Dv;
            tc.type_v    = m.tv;
            tc.n_kv      = std::max(tc.n_kv, 200);
            tc.kv_size   = tc.kv_size > 0 ? tc.n_kv + irand(0, 100) : 0;
            tc.budget    = 64;
            tc.full_frac = 0.0;
            test_attn(tc);
        }
    }
    // exact integer logits up to a few hundred: a softmax without the max subtracted overflows
    for (ggml_type type : {GGML_TYPE_F32, GGML_TYPE_F16}) {
        attn_case tc = random_attn_case(32, type, n++);
        tc.integer_data = true;
        tc.softcap      = 0.0f;
        tc.mask_type    = GGML_TYPE_F16;
        tc.hole_frac    = 0.1;
        test_attn(tc);
    }
    // rerank: exact integer logits with many ties (the tie rule: earlier slots stay), a pool from the select,
    // and n_keep equal to the list (every slot, as ggml_adamas_attn)
    for (ggml_type type : {GGML_TYPE_F32, GGML_TYPE_F16, GGML_TYPE_Q8_0}) {
        attn_case tc = random_attn_case(32, type, n++);
        tc.integer_data = type != GGML_TYPE_Q8_0;
        tc.softcap      = 0.0f;
        tc.n_kv         = 500;
        tc.kv_size      = tc.kv_size > 0 ? tc.n_kv + 37 : 0;
        tc.budget       = 256;
        tc.short_frac   = 0.0;
        tc.n_keep       = 64;
        test_attn(tc);
        tc.from_select  = true;
        tc.integer_data = false;
        tc.n_keep       = 17;
        test_attn(tc);
        tc.n_keep       = tc.budget;
        test_attn(tc);
        // forced slots first (sinks, recent tokens): kept whatever their logits, the rest by logit
        tc.integer_data = type != GGML_TYPE_Q8_0;
        tc.from_select  = false;
        tc.n_keep       = 64;
        for (int n_lead : {1, 20, 64}) {
            tc.n_lead = n_lead;
            test_attn(tc);
        }
        tc.n_lead = 0;
    }
    // nothing visible: all selected cells masked, or every slot -1
    {
        attn_case tc = random_attn_case(64, GGML_TYPE_F32, n++);
        tc.mask_type = GGML_TYPE_F32; tc.hole_frac = 0.0; tc.full_frac = 1.0;
        test_attn(tc);
        tc = random_attn_case(64, GGML_TYPE_Q4_0, n++);
        tc.short_frac = 1.0; tc.n_kv = 1; tc.budget = 4;
        test_attn(tc);
    }
    // end to end: the select op's result feeds the attention in one graph
    for (int i = 0; i < 6; i++) {
        attn_case tc = random_attn_case(pick<int>(k_dims), types[i % 4], n++);
        tc.from_select = true;
        test_attn(tc);
    }
}

static void run_pipeline_tests() {
    test_pipeline({128, 2, 4, 512, 300, 1,  1, 64, GGML_ADAMAS_THR_RMS,   1.0f,  GGML_ADAMAS_SELECT_HEAD,  2});
    test_pipeline({128, 2, 4, 512, 300, 1,  1, 64, GGML_ADAMAS_THR_RMS,   1.0f,  GGML_ADAMAS_SELECT_GROUP, 3});
    test_pipeline({64,  1, 8, 100, 100, 7,  3, 16, GGML_ADAMAS_THR_FIXED, 0.67f, GGML_ADAMAS_SELECT_GROUP, 1});
    test_pipeline({256, 4, 1, 64,  40,  40, 2, 50, GGML_ADAMAS_THR_RMS,   0.5f,  GGML_ADAMAS_SELECT_HEAD,  3});
    test_pipeline({32,  3, 3, 700, 650, 12, 1, 1,  GGML_ADAMAS_THR_FIXED, 0.67f, GGML_ADAMAS_SELECT_HEAD,  2});
}

int main(int argc, char ** argv) {
    uint64_t seed = std::random_device{}();
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-v") == 0) {
            g_verbose = true;
        } else {
            char * end = nullptr;
            seed = strtoull(argv[i], &end, 10);
            if (end == argv[i] || *end != '\0') {
                fprintf(stderr, "usage: %s [SEED] [-v]\n", argv[0]);
                return 2;
            }
        }
    }
    printf("adamas-ops seed %" PRIu64 "\n", seed);
    fflush(stdout);
    g_rng.seed(seed);
    ggml_cpu_init();

    const auto t0 = std::chrono::steady_clock::now();
    run_encode_tests();
    run_select_tests();
    run_attn_tests();
    run_pipeline_tests();
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    for (const auto & kv : g_worst_err) {
        printf("attn %-10s worst relative error %.3g (tolerance %.1g)\n", kv.first.c_str(), kv.second.first, kv.second.second);
    }
    if (g_n_unclear > 0) {
        printf("rerank: %d cases skipped (a kept/dropped boundary within float rounding)\n", g_n_unclear);
    }
    printf("%d checks, %d failed (%.1f s)\n", g_n_checks, g_n_failed, secs);
    return g_n_failed == 0 ? 0 : 1;
}
