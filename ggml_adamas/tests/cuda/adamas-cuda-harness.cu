// Standalone check and timing of the Adamas CUDA kernels (ggml_adamas/src/ggml-cuda/adamas-*.cu), built in
// seconds without ggml:
//
//   nvcc -O3 -std=c++17 -arch=sm_90 -use_fast_math -I ggml_adamas/src/ggml-cuda \
//        ggml_adamas/tests/cuda/adamas-cuda-harness.cu -o adamas-cuda-harness
//   ./adamas-cuda-harness check [seed] [quick]  every kernel against scalar host references (exact codes and
//                                          indices; attention within 1e-4 relative), outputs poisoned first; each
//                                          select case by both distance scans (register, and async on 8.0+)
//   ./adamas-cuda-harness bench            kernel times at the issue's shapes (CUDA events, medians); the
//                                          distance kernel by both scans
//   ./adamas-cuda-harness streams          a sparse layer's kernels for N streams against one (issue 16's shapes)
//   ./adamas-cuda-harness sweep            distance-kernel shapes (heads per block, rounds, pipelining) timed
//   ./adamas-cuda-harness ablate           distance-kernel time with stages left out (where the time goes)
//   compute-sanitizer ./adamas-cuda-harness check     (memcheck; racecheck/synccheck with --tool)
//   ADAMAS_HARNESS_COLD=1 ./adamas-cuda-harness bench|sweep|ablate|rrablate   timed from DRAM (L2 flushed
//                                          before every call, the flush's time subtracted), as in a model
//   GGML_CUDA_ADAMAS_DIST_ASYNC=1          the async distance scan in the op's timings and `one`, as in the op
//
// The host references are written here, independently of the CPU kernels: the FWHT in the order the spec
// fixes (stages h = 1, 2, 4, ...), the RMS in double in the documented block order, the ranking by a plain
// std::sort on (distance asc, cell desc), softmax in double.

#define ADAMAS_CUDA_STANDALONE
#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "adamas-encode.cu"
#include "adamas-select.cu"
#include "adamas-attn.cu"

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { \
    fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); exit(1); } } while (0)

static int g_fail = 0, g_checks = 0;
static int g_checks_async = 0; // select cases run by both distance scans
#define EXPECT(cond, ...) do { g_checks++; if (!(cond)) { g_fail++; if (g_fail < 30) { \
    fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); fprintf(stderr, __VA_ARGS__); fprintf(stderr, "\n"); } } } while (0)

template <typename T> struct dbuf {
    T * p = nullptr; size_t n = 0;
    explicit dbuf(size_t n_) : n(n_) { CK(cudaMalloc(&p, std::max<size_t>(1, n)*sizeof(T))); }
    ~dbuf() { cudaFree(p); }
    void up(const std::vector<T> & h) { CK(cudaMemcpy(p, h.data(), n*sizeof(T), cudaMemcpyHostToDevice)); }
    std::vector<T> down() const { std::vector<T> h(n); CK(cudaMemcpy(h.data(), p, n*sizeof(T), cudaMemcpyDeviceToHost)); return h; }
    void poison() { CK(cudaMemset(p, 0xA5, n*sizeof(T))); }
};

static float f16r(float x) { return __half2float(__float2half_rn(x)); }


// ADAMAS_HARNESS_COLD=1: every timed call comes after a read of 128 MiB (more than the H100's and H200's 50 MB
// of L2), as in a model, where the other layers' weights and caches evict this layer's codes, K and V between its
// steps; warm replays (the default) find them in L2 and favour plans with fewer loads in flight. The flush's own
// time (timed alone the same way) is subtracted.
static bool harness_cold() {
    static const bool cold = adamas_env_switch("ADAMAS_HARNESS_COLD", false);
    return cold;
}

static __global__ void harness_l2_flush_kernel(const int4 * p, size_t n, int * sink) {
    int acc = 0;
    for (size_t i = (size_t) blockIdx.x*blockDim.x + threadIdx.x; i < n; i += (size_t) gridDim.x*blockDim.x) {
        const int4 v = p[i];
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc == 0x7fffffff) *sink = acc; // keeps the loads; the buffer is zeros, so it never stores
}

static void harness_l2_flush(cudaStream_t st) {
    static int4 * buf = nullptr; static int * sink = nullptr;
    constexpr size_t n = (128u << 20)/sizeof(int4);
    if (!buf) { CK(cudaMalloc(&buf, n*sizeof(int4))); CK(cudaMemset(buf, 0, n*sizeof(int4))); CK(cudaMalloc(&sink, sizeof(int))); }
    harness_l2_flush_kernel<<<132*4, 512, 0, st>>>(buf, n, sink);
}

// Median time of one call of f on a stream, from CUDA graph replays (20 calls per graph), so that host launch
// gaps stay out as they do in llama.cpp's CUDA graphs.
template <typename F>
static float time_graph_raw_us(F f) {
    cudaStream_t st; CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    f(st); CK(cudaStreamSynchronize(st)); CK(cudaGetLastError());
    cudaGraph_t g; cudaGraphExec_t ge;
    constexpr int N = 20;
    CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeRelaxed));
    for (int i = 0; i < N; ++i) f(st);
    CK(cudaStreamEndCapture(st, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    CK(cudaGraphLaunch(ge, st)); CK(cudaStreamSynchronize(st));
    cudaEvent_t e0, e1; CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));
    std::vector<float> t;
    for (int r = 0; r < 15; ++r) {
        CK(cudaEventRecord(e0, st)); CK(cudaGraphLaunch(ge, st)); CK(cudaEventRecord(e1, st));
        CK(cudaEventSynchronize(e1)); float ms; CK(cudaEventElapsedTime(&ms, e0, e1)); t.push_back(ms*1e3f/N);
    }
    std::sort(t.begin(), t.end());
    cudaEventDestroy(e0); cudaEventDestroy(e1); cudaGraphExecDestroy(ge); cudaGraphDestroy(g); cudaStreamDestroy(st);
    return t[t.size()/2];
}

template <typename F>
static float time_graph_us(F f) {
    if (!harness_cold()) return time_graph_raw_us(f);
    static float flush_us = -1.0f;
    if (flush_us < 0.0f) flush_us = time_graph_raw_us([](cudaStream_t st) { harness_l2_flush(st); });
    return time_graph_raw_us([&](cudaStream_t st) { harness_l2_flush(st); f(st); }) - flush_us;
}

// ---- encode reference ----
static void ref_encode(const float * x, int D, int mode, float thr, bool skip_wht, uint8_t * out) {
    std::vector<float> y(x, x + D);
    if (!skip_wht) {
        for (int h = 1; h < D; h <<= 1) {
            for (int i = 0; i < D; i += 2*h) {
                for (int j = i; j < i + h; ++j) {
                    const float a = y[j], b = y[j + h];
                    y[j] = a + b; y[j + h] = a - b;
                }
            }
        }
        const float sc = 1.0f/sqrtf((float) D);
        for (float & v : y) v *= sc;
    }
    float t = thr;
    if (mode == 1) {
        const int E = D/32;
        double ss = 0.0;
        for (int l = 0; l < 32; ++l) {
            double p = 0.0;
            for (int i = 0; i < E; ++i) p += (double) y[l*E + i]*(double) y[l*E + i];
            ss += p;
        }
        t = (float) ((double) thr*sqrt(ss/(double) D));
    }
    memset(out, 0, D/4);
    for (int d = 0; d < D; ++d) {
        if (y[d] > 0.0f)              out[d/8]       |= 1u << (d%8);
        if (y[d] <= -t || y[d] > t)   out[D/8 + d/8] |= 1u << (d%8);
    }
}

static int ref_l1(const uint8_t * a, const uint8_t * b, int D) {
    auto code = [&](const uint8_t * c, int d) {
        const int s = (c[d/8] >> (d%8)) & 1, m = (c[D/8 + d/8] >> (d%8)) & 1;
        return s ? (m ? 3 : 2) : (m ? 0 : 1);
    };
    int r = 0;
    for (int d = 0; d < D; ++d) r += std::abs(code(a, d) - code(b, d));
    return r;
}

static void check_encode(std::mt19937 & rng, int D, int n_head, int n_rows, int mode, float thr, bool skip, bool f16,
                         bool round, bool scatter) {
    std::uniform_real_distribution<float> U(-1.0f, 1.0f);
    const int64_t n = (int64_t) D*n_head*n_rows;
    std::vector<float> x(n);
    for (float & v : x) v = f16 ? f16r(U(rng)) : U(rng);
    const int64_t csz = D/4;
    const int64_t n_cells = scatter ? n_rows + 7 : n_rows;
    std::vector<int32_t> idx(n_rows);
    for (int i = 0; i < n_rows; ++i) idx[i] = (int32_t) ((i*5 + 3) % n_cells);
    if (scatter) { std::sort(idx.begin(), idx.end()); idx.erase(std::unique(idx.begin(), idx.end()), idx.end()); }
    const int rows = (int) idx.size();

    dbuf<float> dx(n); dx.up(x);
    std::vector<half> xh(n); for (int64_t i = 0; i < n; ++i) xh[i] = __float2half_rn(x[i]);
    dbuf<half> dxh(n); dxh.up(xh);
    dbuf<int32_t> di(rows); di.up(idx);
    dbuf<uint8_t> dout(n_cells*n_head*csz); dout.poison();

    adamas_encode_args a = {};
    a.src = f16 ? (const char *) dxh.p : (const char *) dx.p;
    a.src_f16 = f16;
    const int64_t es = f16 ? 2 : 4;
    a.snb1 = D*es; a.snb2 = D*es*n_head; a.snb3 = a.snb2*rows; a.n_head = n_head; a.n_rows = rows; a.ne3 = 1;
    a.dst = (char *) dout.p;
    a.scatter = scatter; a.idxs = scatter ? di.p : nullptr; a.idxs_i64 = false;
    if (scatter) { a.dnb1 = n_head*csz; a.dnb2 = a.dnb1*n_cells; a.dnb3 = a.dnb2; a.dne1 = n_cells; a.dne2 = 1; }
    else         { a.dnb1 = csz; a.dnb2 = csz*n_head; a.dnb3 = a.dnb2*rows; }
    a.n_cells = n_cells; a.mode = mode; a.thr = thr; a.skip_wht = skip; a.round_f16 = round && !f16;
    a.wht_scale = 1.0f/sqrtf((float) D);
    adamas_encode_launch(a, D, 0);
    CK(cudaGetLastError()); CK(cudaDeviceSynchronize());
    const std::vector<uint8_t> out = dout.down();

    int bad = 0;
    std::vector<uint8_t> ref(csz);
    std::vector<float> xr(D);
    for (int r = 0; r < rows; ++r) {
        for (int h = 0; h < n_head; ++h) {
            const float * xs = x.data() + ((int64_t) r*n_head + h)*D;
            for (int d = 0; d < D; ++d) xr[d] = a.round_f16 ? f16r(xs[d]) : xs[d];
            ref_encode(xr.data(), D, mode, thr, skip, ref.data());
            const uint8_t * o = out.data() + (scatter ? (int64_t) idx[r]*n_head*csz + h*csz : ((int64_t) r*n_head + h)*csz);
            bad += memcmp(o, ref.data(), csz) != 0;
        }
    }
    EXPECT(bad == 0, "encode D=%d heads=%d rows=%d mode=%d thr=%g skip=%d f16=%d round=%d scatter=%d: %d vectors differ",
           D, n_head, rows, mode, thr, skip, f16, round, scatter, bad);
}

// ---- select ----
struct sel_case { int D, n_head_kv, n_gqa, n_kv, n_q, budget; bool group; int mask; int pool; bool vec;
                  int hb = 0, rounds = 0, pipe = -1;    // distance-kernel shape overrides (0/-1: the op's plan)
                  int list = 0;                         // candidate lists (ggml_adamas_select_cells), see below
                  int ns = 1; };                        // streams (per-sequence caches), n_q queries each
// mask: 0 none, 1 f16 with -INF holes and a few +INF, 2 f32 all -INF in query 0; pool: >0 draws codes from
// that many distinct codes (ties); ns: streams, each its own cache of n_kv cells, its own mask rows and lists
// (the kernels' stream strides), n_q queries each; list: 0 none, 1 each query lists a random half of the cells (a sequence of a
// unified cache), then -1 up to a padded length, 2 every cell with -1 entries between them (the result of no list)

static void make_codes(std::mt19937 & rng, int D, int64_t n, int pool, std::vector<uint8_t> & c) {
    const int csz = D/4;
    std::vector<uint8_t> pl((size_t) std::max(pool, 1)*csz);
    for (auto & b : pl) b = (uint8_t) rng();
    c.resize(n*csz);
    for (int64_t i = 0; i < n; ++i) {
        if (pool > 0) memcpy(&c[i*csz], &pl[(rng() % pool)*csz], csz);
        else for (int j = 0; j < csz; ++j) c[i*csz + j] = (uint8_t) rng();
    }
}

// the async distance scan (v12) where the device runs cp.async (8.0+; this build is sm_80+ code)
static bool harness_async_device() {
    static int v = -1;
    if (v < 0) {
        cudaDeviceProp p; CK(cudaGetDeviceProperties(&p, 0));
        v = p.major >= 8;
    }
    return v != 0;
}

// ms_dist: [0] the op (the async scan with GGML_CUDA_ADAMAS_DIST_ASYNC=1), [1] the distance kernel by the
// register scan, [2] the emit kernel, [3] the distance kernel by the async scan (-1: it does not apply)
static void run_select(const sel_case & sc, std::mt19937 & rng, bool check, float * ms_dist = nullptr,
                       std::vector<int32_t> * idx = nullptr, int64_t * n_blocks = nullptr) {
    const int D = sc.D, csz = D/4, nh = sc.n_head_kv*sc.n_gqa;
    // n_q: the queries of all streams (stream s holds queries [s*sc.n_q, (s + 1)*sc.n_q)), as the kernels number
    // their rows; the codes, mask rows and lists below are per such query, K per stream
    const int n_kv = sc.n_kv, ns = sc.ns, n_q = sc.n_q*ns;
    std::vector<uint8_t> qc, kc;
    make_codes(rng, D, (int64_t) nh*n_q, 0, qc);
    make_codes(rng, D, (int64_t) ns*sc.n_head_kv*n_kv, sc.pool, kc);
    // K codes as in a cache: rows of n_head_kv codes per cell, plus a stride pad when !vec (4-byte aligned only)
    const int64_t row = (int64_t) sc.n_head_kv*csz + (sc.vec ? 0 : 4);
    std::vector<uint8_t> kcache(ns*row*n_kv + 4, 0);
    for (int64_t c = 0; c < (int64_t) ns*n_kv; ++c) for (int h = 0; h < sc.n_head_kv; ++h)
        memcpy(&kcache[c*row + h*csz + (sc.vec ? 0 : 4)], &kc[((int64_t) c*sc.n_head_kv + h)*csz], csz);
    std::vector<uint16_t> mh; std::vector<float> mf;
    const uint16_t F16_NINF = 0xFC00, F16_PINF = 0x7C00, F16_ZERO = 0;
    std::vector<int> mcls((size_t) n_q*n_kv, 0); // 0 visible, 1 -INF, 2 +INF
    if (sc.mask == 1) {
        mh.resize((size_t) n_q*n_kv);
        for (int i = 0; i < n_q; ++i) for (int c = 0; c < n_kv; ++c) {
            const int r = rng() % 64;
            const int cls = r < 12 ? 1 : r == 12 ? 2 : 0;
            mcls[(size_t) i*n_kv + c] = cls;
            mh[(size_t) i*n_kv + c] = cls == 1 ? F16_NINF : cls == 2 ? F16_PINF : F16_ZERO;
        }
    } else if (sc.mask == 2) {
        mf.resize((size_t) n_q*n_kv, 0.0f);
        for (int c = 0; c < n_kv; ++c) { mf[c] = -INFINITY; mcls[c] = 1; }
        for (int i = 1; i < n_q; ++i) for (int c = 0; c < n_kv; ++c) {
            const bool hole = rng() % 3 == 0;
            mf[(size_t) i*n_kv + c] = hole ? -INFINITY : 0.5f;
            mcls[(size_t) i*n_kv + c] = hole ? 1 : 0;
        }
    }
    const int64_t n_sel = sc.group ? sc.n_head_kv : nh;
    const int64_t nrows = n_sel*n_q;

    // candidate lists [n_q][n_cand], increasing, -1 padding; listed[iq*n_kv + c]: c is a candidate of query iq
    std::vector<char> listed((size_t) n_q*n_kv, sc.list == 0);
    std::vector<std::vector<int32_t>> rows(n_q);
    int n_cand = 0;
    if (sc.list > 0) {
        for (int iq = 0; iq < n_q; ++iq) {
            for (int c = 0; c < n_kv; ++c) {
                if (sc.list == 2 && rng() % 5 == 0) rows[iq].push_back(-1);
                if (sc.list == 2 || rng() % 2 == 0) { rows[iq].push_back(c); listed[(size_t) iq*n_kv + c] = 1; }
            }
            n_cand = std::max(n_cand, (int) rows[iq].size());
        }
        n_cand += 1 + (int) (rng() % 40);
    }
    std::vector<int32_t> cl((size_t) n_q*n_cand, -1);
    for (int iq = 0; iq < n_q; ++iq) std::copy(rows[iq].begin(), rows[iq].end(), cl.begin() + (size_t) iq*n_cand);
    dbuf<int32_t> dcl(cl.size()); if (!cl.empty()) dcl.up(cl);
    const int n_pos = sc.list > 0 ? n_cand : n_kv; // what the kernels rank per row

    dbuf<uint8_t> dq(qc.size()); dq.up(qc);
    dbuf<uint8_t> dk(kcache.size()); dk.up(kcache);
    dbuf<uint16_t> dmh(mh.size()); if (!mh.empty()) dmh.up(mh);
    dbuf<float> dmf(mf.size()); if (!mf.empty()) dmf.up(mf);
    dbuf<int32_t> dout(nrows*sc.budget); dout.poison();

    adamas_select_args a = {};
    a.qc = (const char *) dq.p; a.qnb1 = csz; a.qnb2 = (int64_t) csz*nh; a.qnb3 = a.qnb2*sc.n_q;
    a.kc = (const char *) dk.p + (sc.vec ? 0 : 4); a.knb1 = csz; a.knb2 = row; a.knb3 = row*n_kv;
    a.mask = sc.mask == 1 ? (const char *) dmh.p : sc.mask == 2 ? (const char *) dmf.p : nullptr;
    a.mask_f16 = sc.mask == 1;
    a.mnb1 = (int64_t) n_kv*(sc.mask == 1 ? 2 : 4); a.mnb3 = a.mnb1*sc.n_q; a.mne3 = ns;
    a.cells = sc.list > 0 ? (const char *) dcl.p : nullptr; a.cnb1 = (int64_t) n_cand*4; a.cnb2 = a.cnb1*sc.n_q;
    a.n_head = nh; a.n_head_kv = sc.n_head_kv; a.n_gqa = sc.n_gqa; a.n_q = sc.n_q; a.ns = ns; a.n_kv = n_pos;
    a.group = sc.group; a.budget = sc.budget; a.n_sel = n_sel;
    a.nbins = adamas_select_nbins(D, sc.n_gqa, sc.group); a.nrows = nrows;
    a.dist_stride = adamas_select_dist_stride(n_pos);
    dbuf<uint16_t> ddist(nrows*a.dist_stride); dbuf<int32_t> dhist(nrows*a.nbins);
    a.dist = ddist.p; a.hist = dhist.p;
    { cudaDeviceProp prop; CK(cudaGetDeviceProperties(&prop, 0)); a.n_sm = prop.multiProcessorCount; }
    a.dst = (char *) dout.p; a.onb1 = (int64_t) sc.budget*4; a.onb2 = a.onb1*n_sel; a.onb3 = a.onb2*sc.n_q;

    adamas_select_plan(a, D);
    if (sc.hb > 0) a.hb = sc.hb;
    if (sc.rounds > 0) a.chunk = sc.rounds*adamas_select_round(a.hb, D);
    if (sc.pipe >= 0) a.pipe = sc.pipe != 0;
    if (n_blocks) *n_blocks = (a.n_head_kv/a.hb)*((n_pos + a.chunk - 1)/a.chunk)*n_q;
    a.async_ok = harness_async_device() && adamas_select_async_env();
    a.par_rank = adamas_par_rank_env();
    adamas_select_args a_reg = a, a_async = a; // the two distance scans
    a_reg.async_ok = false;
    a_async.async_ok = harness_async_device();
    const bool async = adamas_select_dist_async(a_async, D, sc.vec);

    // one run of the op: indices, distances and histograms (distances poisoned first: both scans leave the same
    // padding)
    auto run = [&](const adamas_select_args & b, std::vector<int32_t> & o, std::vector<uint16_t> & dd, std::vector<int32_t> & hh) {
        dout.poison(); ddist.poison();
        adamas_select_run(b, D, sc.vec, 0);
        CK(cudaGetLastError()); CK(cudaDeviceSynchronize());
        o = dout.down(); dd = ddist.down(); hh = dhist.down();
    };
    std::vector<int32_t> out, out_async, hist, hist_async;
    std::vector<uint16_t> dist, dist_async;
    run(check ? a_reg : a, out, dist, hist);
    if (check && async) {
        run(a_async, out_async, dist_async, hist_async);
        EXPECT(dist_async == dist && hist_async == hist && out_async == out,
               "select D=%d kv_heads=%d gqa=%d n_kv=%d n_q=%d %s hb=%d chunk=%lld mask=%d: the async scan's distances %s, histograms %s, indices %s",
               D, sc.n_head_kv, sc.n_gqa, n_kv, n_q, sc.group ? "GROUP" : "HEAD", a.hb, (long long) a.chunk, sc.mask,
               dist_async == dist ? "same" : "DIFFER", hist_async == hist ? "same" : "DIFFER", out_async == out ? "same" : "DIFFER");
    }
    if (check) {
        // the emit's other rank loop (GGML_CUDA_ADAMAS_PAR_RANK, v13) must give the same indices
        adamas_select_args a_pr = a_reg;
        a_pr.par_rank = !a_reg.par_rank;
        std::vector<int32_t> out_pr, hist_pr;
        std::vector<uint16_t> dist_pr;
        run(a_pr, out_pr, dist_pr, hist_pr);
        EXPECT(out_pr == out, "select D=%d kv_heads=%d gqa=%d n_kv=%d n_q=%d budget=%d %s: indices with par_rank=%d DIFFER",
               D, sc.n_head_kv, sc.n_gqa, n_kv, n_q, sc.budget, sc.group ? "GROUP" : "HEAD", (int) a_pr.par_rank);
    }
    if (idx) *idx = out;

    if (ms_dist) {
        ms_dist[0] = time_graph_us([&](cudaStream_t st) { adamas_select_run(a, D, sc.vec, st); });
        ms_dist[1] = time_graph_us([&](cudaStream_t st) { adamas_select_dist_launch<128>(a_reg, sc.vec, st); });
        const int n_sort = adamas_next_pow2(std::min(sc.budget, n_kv));
        ms_dist[2] = time_graph_us([&](cudaStream_t st) {
            adamas_select_emit_kernel<<<(unsigned) a.nrows, ADAMAS_SELECT_EMIT_BLOCK, n_sort*8, st>>>(a, n_sort); });
        ms_dist[3] = async ? time_graph_us([&](cudaStream_t st) { adamas_select_dist_launch<128>(a_async, sc.vec, st); }) : -1.0f;
    }
    if (!check) return;

    int bad = 0;
    for (int iq = 0; iq < n_q; ++iq) for (int64_t hs = 0; hs < n_sel; ++hs) {
        std::vector<std::pair<int, int>> cand; // (rank distance, cell)
        for (int c = 0; c < n_kv; ++c) {
            const int cls = mcls[(size_t) iq*n_kv + c];
            if (cls == 1 || !listed[(size_t) iq*n_kv + c]) continue;
            int d = 0;
            if (cls == 2) d = -1;
            else {
                const int kvh = sc.group ? (int) hs : (int) hs/sc.n_gqa;
                const int h0 = sc.group ? (int) hs*sc.n_gqa : (int) hs, g = sc.group ? sc.n_gqa : 1;
                for (int j = 0; j < g; ++j)
                    d += ref_l1(&qc[((int64_t) iq*nh + h0 + j)*csz], &kc[(((int64_t) (iq/sc.n_q)*n_kv + c)*sc.n_head_kv + kvh)*csz], D);
            }
            cand.push_back({d, c});
        }
        std::sort(cand.begin(), cand.end(), [](auto x, auto y) { return x.first != y.first ? x.first < y.first : x.second > y.second; });
        const int32_t * o = out.data() + ((int64_t) iq*n_sel + hs)*sc.budget;
        for (int j = 0; j < sc.budget; ++j) {
            const int want = j < (int) cand.size() ? cand[j].second : -1;
            if (o[j] != want) { bad++; break; }
        }
    }
    EXPECT(bad == 0, "select D=%d kv_heads=%d gqa=%d n_kv=%d n_q=%d ns=%d budget=%d %s mask=%d pool=%d vec=%d list=%d n_cand=%d hb=%d: %d rows differ",
           D, sc.n_head_kv, sc.n_gqa, n_kv, sc.n_q, ns, sc.budget, sc.group ? "GROUP" : "HEAD", sc.mask, sc.pool, sc.vec, sc.list, n_cand, a.hb, bad);
    g_checks_async += async;
}

// ---- attention ----
// the rerank's cluster kernel (v10) where the device has clusters (sm_90+), unless ADAMAS_RR_OLD=1 asks for the
// two-kernel path (score, then select + V)
static bool harness_rr_cluster() {
    static int v = -1;
    if (v < 0) {
        cudaDeviceProp p; CK(cudaGetDeviceProperties(&p, 0));
        v = p.major >= 9 && !adamas_env_switch("ADAMAS_RR_OLD", false);
    }
    return v != 0;
}

struct attn_case { int D, n_head_kv, n_gqa, n_kv, n_q, budget; bool per_head; int kt; bool mask; float softcap;
                   int n_keep = 0, n_lead = 0;
                   int stage = 0;     // timing (rrablate): 0 the op; rerank: 1 score kernel, 2 rerank kernel, 3 rerank
                                      // without the radix select, 4 without V loads, 5 without both; 6 an empty
                                      // kernel on the rerank kernel's grid, 7 on the score kernel's
                   int rr = -1;       // rerank path: -1 the harness's default, 0 two kernels, 1 the cluster kernel
                   int ns = 1; };     // streams (per-sequence caches), n_q queries each
// (rerank cases: integer q and K, scale 1/8, so the logits are exact)

static void quant_row(int kt, const float * x, int D, std::vector<uint8_t> & out, std::vector<float> & deq) {
    deq.resize(D);
    if (kt == ADAMAS_KV_F32) { out.resize(D*4); memcpy(out.data(), x, D*4); for (int i = 0; i < D; ++i) deq[i] = x[i]; return; }
    if (kt == ADAMAS_KV_F16) { out.resize(D*2); for (int i = 0; i < D; ++i) { half h = __float2half_rn(x[i]); memcpy(&out[2*i], &h, 2); deq[i] = __half2float(h); } return; }
    if (kt == ADAMAS_KV_BF16) { out.resize(D*2); for (int i = 0; i < D; ++i) { uint32_t u; memcpy(&u, &x[i], 4); uint16_t b = (uint16_t) (u >> 16); memcpy(&out[2*i], &b, 2); const uint32_t ub = (uint32_t) b << 16; memcpy(&deq[i], &ub, 4); } return; }
    const bool q8 = kt == ADAMAS_KV_Q8_0;
    const int bs = q8 ? 34 : 18;
    out.assign((D/32)*bs, 0);
    for (int b = 0; b < D/32; ++b) {
        float amax = 0; for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[b*32 + i]));
        const float d = q8 ? amax/127.0f : amax/8.0f;
        const half dh = __float2half_rn(d); const float df = __half2float(dh);
        memcpy(&out[b*bs], &dh, 2);
        for (int i = 0; i < 32; ++i) {
            const float v = x[b*32 + i];
            if (q8) { int q = df ? (int) lrintf(v/df) : 0; q = std::max(-127, std::min(127, q)); out[b*bs + 2 + i] = (uint8_t) (int8_t) q; deq[b*32 + i] = (float) q*df; }
            else { int q = df ? (int) lrintf(v/df) + 8 : 8; q = std::max(0, std::min(15, q));
                   if (i < 16) out[b*bs + 2 + i] |= (uint8_t) q; else out[b*bs + 2 + i - 16] |= (uint8_t) (q << 4);
                   deq[b*32 + i] = (float) (q - 8)*df; }
        }
    }
}

static __global__ void empty_kernel(int * p) { if (p && threadIdx.x == 1023) p[blockIdx.x] = 0; }

// one stage of the rerank path (D = 128, per-head rows, NG = 1), as adamas_attn_rerank_launch_ng launches it
static float time_rerank_stage(adamas_attn_args a, int stage) {
    a.n_hb = a.n_gqa; a.n_split = 1;
    const size_t smem = adamas_attn_rerank_smem(128, 1, a.budget);
    const dim3 grid((unsigned) a.n_head, 1, (unsigned) (a.n_q*a.ns));
    const dim3 grid_s((unsigned) a.n_head, (unsigned) ((a.budget + ADAMAS_ATTN_SLOTS - 1)/ADAMAS_ATTN_SLOTS), (unsigned) (a.n_q*a.ns));
    adamas_attn_score_kernel<128, 1><<<grid_s, ADAMAS_ATTN_NWARP*WARP_SIZE>>>(a); // the logits the rerank stages read
    CK(cudaDeviceSynchronize());
    adamas_set_smem(adamas_attn_rerank_kernel<128, 1, 0>, smem);
    adamas_set_smem(adamas_attn_rerank_kernel<128, 1, 1>, smem);
    adamas_set_smem(adamas_attn_rerank_kernel<128, 1, 2>, smem);
    adamas_set_smem(adamas_attn_rerank_kernel<128, 1, 3>, smem);
    return time_graph_us([&](cudaStream_t st) {
        switch (stage) {
            case 1: adamas_attn_score_kernel<128, 1><<<grid_s, ADAMAS_ATTN_NWARP*WARP_SIZE, 0, st>>>(a); break;
            case 2: adamas_attn_rerank_kernel<128, 1, 0><<<grid, ADAMAS_RR_NWARP*WARP_SIZE, smem, st>>>(a); break;
            case 3: adamas_attn_rerank_kernel<128, 1, 1><<<grid, ADAMAS_RR_NWARP*WARP_SIZE, smem, st>>>(a); break;
            case 4: adamas_attn_rerank_kernel<128, 1, 2><<<grid, ADAMAS_RR_NWARP*WARP_SIZE, smem, st>>>(a); break;
            case 5: adamas_attn_rerank_kernel<128, 1, 3><<<grid, ADAMAS_RR_NWARP*WARP_SIZE, smem, st>>>(a); break;
            case 6: empty_kernel<<<grid, ADAMAS_RR_NWARP*WARP_SIZE, 0, st>>>(nullptr); break;
            default: empty_kernel<<<grid_s, ADAMAS_ATTN_NWARP*WARP_SIZE, 0, st>>>(nullptr); break;
        }
    });
}

static void run_attn(const attn_case & ac, std::mt19937 & rng, bool check, float * ms = nullptr) {
    // n_q: the queries of all streams (stream s: queries [s*ac.n_q, (s + 1)*ac.n_q)); K and V per stream
    const int D = ac.D, nh = ac.n_head_kv*ac.n_gqa, n_kv = ac.n_kv, ns = ac.ns, n_q = ac.n_q*ns;
    std::uniform_real_distribution<float> U(-1.0f, 1.0f);
    const bool rr = ac.n_keep > 0 && ac.n_keep < ac.budget;
    std::vector<float> q((size_t) D*nh*n_q);
    for (float & v : q) v = rr ? (float) ((int) (rng() % 5) - 2) : U(rng);
    // K/V cache [D, n_head_kv, n_kv] as llama.cpp lays it out: cell rows of n_head_kv heads
    std::vector<uint8_t> kb, vb, tmp; std::vector<float> deq, x(D);
    std::vector<float> kd((size_t) ns*n_kv*ac.n_head_kv*D), vd(kd.size());
    int64_t rs = 0;
    for (int64_t c = 0; c < (int64_t) ns*n_kv; ++c) for (int h = 0; h < ac.n_head_kv; ++h) for (int w = 0; w < 2; ++w) {
        for (int i = 0; i < D; ++i) {
            // rerank K: integers that every type stores exactly (Q8_0: 0 and +-127 with 127 first in a block of 32,
            // so its scale is 1; the others: [-8, 7] with -8 first)
            x[i] = !rr || w ? U(rng) : ac.kt == ADAMAS_KV_Q8_0 ? (i % 32 == 0 ? 127.0f : 127.0f*(float) ((int) (rng() % 3) - 1))
                                                                : (i % 32 == 0 ? -8.0f : (float) ((int) (rng() % 16) - 8));
        }
        quant_row(ac.kt, x.data(), D, tmp, deq);
        rs = (int64_t) tmp.size();
        auto & buf = w ? vb : kb;
        buf.insert(buf.end(), tmp.begin(), tmp.end());
        std::copy(deq.begin(), deq.end(), (w ? vd : kd).begin() + ((int64_t) c*ac.n_head_kv + h)*D);
    }
    const int64_t n_sel = ac.per_head ? nh : ac.n_head_kv;
    std::vector<int32_t> idx((size_t) ac.budget*n_sel*n_q);
    for (size_t i = 0; i < idx.size(); ++i) idx[i] = rng() % 9 == 0 ? -1 : (int32_t) (rng() % n_kv);
    std::vector<uint16_t> mh((size_t) n_q*n_kv);
    std::vector<float> mval(mh.size());
    for (size_t i = 0; i < mh.size(); ++i) {
        const int r = rng() % 8;
        const float v = r == 0 ? -INFINITY : (float) (rng() % 5) - 2.0f;
        mval[i] = v; half h = __float2half_rn(v); memcpy(&mh[i], &h, 2);
    }
    dbuf<float> dq(q.size()); dq.up(q);
    dbuf<uint8_t> dk(kb.size()); dk.up(kb);
    dbuf<uint8_t> dv(vb.size()); dv.up(vb);
    dbuf<int32_t> di(idx.size()); di.up(idx);
    dbuf<uint16_t> dm(mh.size()); dm.up(mh);
    dbuf<float> dout((size_t) D*nh*n_q); dout.poison();

    adamas_attn_args a = {};
    // q as ggml_flash_attn_ext's [D, n_q, n_head, 1] view of a [D, n_head, n_q] tensor
    a.q = (const char *) dq.p; a.qnb1 = (int64_t) D*4*nh; a.qnb2 = (int64_t) D*4; a.qnb3 = a.qnb1*ac.n_q;
    a.k = (const char *) dk.p; a.knb1 = rs*ac.n_head_kv; a.knb2 = rs; a.knb3 = a.knb1*n_kv; a.kt = ac.kt;
    a.v = (const char *) dv.p; a.vnb1 = rs*ac.n_head_kv; a.vnb2 = rs; a.vnb3 = a.vnb1*n_kv; a.vt = ac.kt;
    a.mask = ac.mask ? (const char *) dm.p : nullptr; a.mask_f16 = true; a.mnb1 = (int64_t) n_kv*2; a.mnb3 = a.mnb1*ac.n_q; a.mne3 = ns;
    a.idx = (const char *) di.p; a.inb1 = (int64_t) ac.budget*4; a.inb2 = a.inb1*n_sel; a.inb3 = a.inb2*ac.n_q;
    a.budget = ac.budget; a.per_head = ac.per_head;
    a.n_head = nh; a.n_head_kv = ac.n_head_kv; a.n_gqa = ac.n_gqa; a.n_q = ac.n_q; a.ns = ns; a.n_kv = n_kv;
    a.scale = rr ? 0.125f : 1.0f/sqrtf((float) D); a.softcap = ac.softcap; a.dst = dout.p;
    a.n_keep = ac.n_keep; a.n_lead = ac.n_lead;
    a.rr_cluster = ac.rr < 0 ? harness_rr_cluster() : ac.rr == 1;
    a.par_rank = adamas_par_rank_env();
    dbuf<float> dpart(std::max<int64_t>(1, adamas_attn_part_size(D, nh, ac.n_q, ns, ac.budget, ac.n_keep))); a.part = dpart.p;
    dbuf<float> dlog(std::max<int64_t>(1, adamas_attn_logits_size(D, nh, ac.n_head_kv, ac.per_head, ac.n_q, ns, ac.budget, ac.n_keep)));
    dlog.poison(); a.logits = dlog.p;
    adamas_attn_launch(a, D, 0);
    CK(cudaGetLastError()); CK(cudaDeviceSynchronize());
    if (ms) {
        *ms = ac.stage == 0 ? time_graph_us([&](cudaStream_t st) { adamas_attn_launch(a, D, st); })
                            : time_rerank_stage(a, ac.stage);
    }
    if (!check) return;
    const std::vector<float> out = dout.down();
    if (rr) {
        // the cluster rerank's other rank loop (GGML_CUDA_ADAMAS_PAR_RANK, v13) keeps the same slots: same output bits
        adamas_attn_args a_pr = a;
        a_pr.par_rank = !a.par_rank;
        dout.poison();
        adamas_attn_launch(a_pr, D, 0);
        CK(cudaGetLastError()); CK(cudaDeviceSynchronize());
        EXPECT(dout.down() == out, "attn D=%d kv_heads=%d n_kv=%d budget=%d keep=%d lead=%d: output with par_rank=%d DIFFERS",
               D, ac.n_head_kv, n_kv, ac.budget, ac.n_keep, ac.n_lead, (int) a_pr.par_rank);
    }
    double err2 = 0, ref2 = 0; int nonfinite = 0;
    for (int iq = 0; iq < n_q; ++iq) for (int h = 0; h < nh; ++h) {
        const int kvh = h/ac.n_gqa;
        const int32_t * sel = idx.data() + ((int64_t) iq*n_sel + (ac.per_head ? h : kvh))*ac.budget;
        std::vector<double> l(ac.budget, -INFINITY); double M = -INFINITY;
        for (int j = 0; j < ac.budget; ++j) {
            const int c = sel[j]; if (c < 0) continue;
            const double mv = ac.mask ? mval[(size_t) iq*n_kv + c] : 0.0; if (mv == -INFINITY) continue;
            double s = 0; for (int d = 0; d < D; ++d) s += (double) q[((size_t) iq*nh + h)*D + d]*kd[(((size_t) (iq/ac.n_q)*n_kv + c)*ac.n_head_kv + kvh)*D + d];
            s *= (double) a.scale;
            if (ac.softcap != 0) s = ac.softcap*tanh(s/ac.softcap);
            l[j] = s + mv; M = std::max(M, l[j]);
        }
        if (rr && M != -INFINITY) {
            // the first n_lead slots stay; of the others the n_keep - n_lead largest by (logit desc, slot asc)
            std::vector<int> order;
            for (int j = ac.n_lead; j < ac.budget; ++j) if (l[j] != -INFINITY) order.push_back(j);
            std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return l[x] > l[y]; });
            for (size_t i = ac.n_keep - ac.n_lead; i < order.size(); ++i) l[order[i]] = -INFINITY;
            M = -INFINITY; for (int j = 0; j < ac.budget; ++j) M = std::max(M, l[j]);
        }
        for (int d = 0; d < D; ++d) {
            double o = 0, S = 0;
            if (M != -INFINITY) for (int j = 0; j < ac.budget; ++j) if (l[j] != -INFINITY) {
                const double p = exp(l[j] - M); S += p; o += p*vd[(((size_t) (iq/ac.n_q)*n_kv + sel[j])*ac.n_head_kv + kvh)*D + d]; }
            const double ref = M == -INFINITY ? 0.0 : o/S;
            const float got = out[((size_t) iq*nh + h)*D + d];
            nonfinite += !std::isfinite(got);
            err2 += (got - ref)*(got - ref); ref2 += ref*ref;
        }
    }
    const double rel = sqrt(err2/std::max(ref2, 1e-30));
    EXPECT(nonfinite == 0 && rel < 1e-4, "attn D=%d kv_heads=%d gqa=%d n_kv=%d n_q=%d ns=%d budget=%d per_head=%d type=%d mask=%d softcap=%g keep=%d lead=%d: rel err %.3g, %d non-finite",
           D, ac.n_head_kv, ac.n_gqa, n_kv, ac.n_q, ns, ac.budget, ac.per_head, ac.kt, ac.mask, ac.softcap, ac.n_keep, ac.n_lead, rel, nonfinite);
}

static int do_check(unsigned seed, bool quick) {
    std::mt19937 rng(seed);
    printf("seed %u\n", seed);
    for (int D : {32, 64, 128, 256}) {
        for (int mode : {0, 1}) for (bool skip : {false, true}) for (bool f16 : {false, true}) {
            check_encode(rng, D, 5, 9, mode, mode ? 0.5f : 0.05f, skip, f16, false, false);
        }
        check_encode(rng, D, 4, 33, 1, 1.0f, false, false, true, false);
        check_encode(rng, D, 3, 20, 0, 0.1f, false, false, true, true);
    }
    for (int D : {32, 64, 128, 256}) for (bool group : {false, true}) for (int gqa : {1, 3, 4, 8}) {
        for (int n_kv : {1, 37, 700, 9000}) for (int budget : {1, 64, 1000}) {
            const int mask = (n_kv + budget + gqa) % 3, pool = n_kv % 2 ? 3 : 0;
            run_select({D, 2, gqa, n_kv, (mask == 2) ? 2 : 1, budget, group, mask, pool, (D + n_kv) % 4 != 0}, rng, true);
        }
    }
    // the distance kernel's other shapes (the sweep's): pipelined loads, several heads and rounds per block
    for (int D : {32, 64, 128, 256}) for (bool group : {false, true}) for (int gqa : {1, 4}) for (int hb : {1, 2, 4}) {
        sel_case sc = {D, 4, gqa, 2000 + 37*hb, 1 + (hb == 2), 64 + hb, group, hb == 2 ? 2 : 1, D == 64 ? 3 : 0, hb != 4};
        sc.hb = hb; sc.rounds = 1 + (D + hb) % 3; sc.pipe = (D/32 + hb) % 2;
        run_select(sc, rng, true);
    }
    run_select({128, 8, 4, 40000, 1, 256, true, 1, 0, true}, rng, true);
    run_select({128, 8, 4, 40000, 1, 4096, false, 0, 2, true}, rng, true);
    run_select({64, 1, 32, 5000, 1, 100, true, 1, 0, true}, rng, true);   // MQA: 32 heads on one KV head
    run_select({256, 1, 16, 3000, 3, 300, false, 1, 5, true}, rng, true);
    // the async scan's shapes (v12): MHA with 8 KV heads a block (the op's plan), 16 and 32 (the sweep's), partial
    // last stages (n_kv odd, chunks of 1-3 rounds), masks f16/f32/none, several queries, both modes
    for (int D : {64, 128, 256}) for (bool group : {false, true}) for (int n_kv : {1, 63, 1000, 4099}) {
        const int mask = (n_kv + D/64) % 3;
        run_select({D, 16, 1, n_kv, mask == 2 ? 3 : 1 + n_kv % 2, 50, group, mask, n_kv % 2 ? 3 : 0, true}, rng, true);
        sel_case sc = {D, 32, 1, n_kv + 17, 2, 100, group, 1, 0, true};
        sc.hb = D == 256 ? 16 : 32; sc.rounds = 1 + n_kv % 3;
        run_select(sc, rng, true);
    }
    // candidate lists: a random half of the cells per query and every cell with -1 between, masks with -INF and
    // +INF cells, ties, budgets past the list, several queries, head and group rows, the distance-kernel shapes
    for (int D : {32, 64, 128, 256}) for (bool group : {false, true}) for (int list : {1, 2}) {
        for (int n_kv : {1, 37, 700, 9000}) for (int budget : {1, 64, 1000}) {
            sel_case sc = {D, 2, group ? 4 : 3, n_kv, 1 + (n_kv + budget) % 3, budget, group, (n_kv + budget + D) % 3,
                           n_kv % 2 ? 3 : 0, (D + n_kv) % 4 != 0};
            if (sc.mask == 2 && sc.n_q < 2) sc.n_q = 2;
            sc.list = list;
            run_select(sc, rng, true);
        }
        sel_case sc = {D, 4, 2, 3000, 2, 100, group, 1, 0, true};
        sc.list = list; sc.hb = 2; sc.rounds = 2; sc.pipe = D % 64 == 0;
        run_select(sc, rng, true);
    }
    // several streams (per-sequence caches, issue 16): each its own cache, mask rows and lists; both scans where
    // the async one applies, with and without lists, one and two queries a stream
    for (int D : {32, 64, 128, 256}) for (bool group : {false, true}) for (int list : {0, 1}) for (int ns : {2, 5}) {
        sel_case sc = {D, 4, 2, 1500 + 97*ns, 1 + (ns + list) % 2, 64*ns - 1, group, 1 + list, list ? 0 : 3, list == 0};
        sc.list = list; sc.ns = ns;
        run_select(sc, rng, true);
    }
    for (int D : {32, 64, 128, 256}) for (int kt : {0, 1, 2, 3, 4}) for (int gqa : {1, 3, 8}) for (bool per_head : {false, true}) {
        run_attn({D, 2, gqa, 500, 1 + (kt % 2), 1 + (D*kt + gqa) % 300, per_head, kt, (kt + gqa) % 2 == 0, kt == 2 ? 20.0f : 0.0f}, rng, true);
    }
    run_attn({128, 8, 4, 4000, 1, 1024, false, 1, true, 0.0f}, rng, true);
    run_attn({128, 1, 32, 3000, 1, 256, false, 1, true, 0.0f}, rng, true); // MQA: 4 blocks of 8 heads
    // rerank: every type, head and group rows, pools from 2 to 8K, kept counts from 1, forced slots
    for (int D : {32, 64, 128, 256}) for (int kt : {0, 1, 2, 3, 4}) for (int gqa : {1, 3, 8}) for (bool per_head : {false, true}) {
        const int pool = 2 + (D*kt + 7*gqa) % 600;
        attn_case ac = {D, 2, gqa, 700, 1 + (kt % 2), pool, per_head, kt, (kt + gqa) % 2 == 0, kt == 2 ? 20.0f : 0.0f};
        ac.n_keep = 1 + (pool*(1 + kt)) % (pool - 1);
        ac.n_lead = gqa == 3 ? ac.n_keep/3 : 0;
        run_attn(ac, rng, true);
    }
    // several streams (per-sequence caches, issue 16): plain attention, the two-kernel and the cluster rerank
    for (int D : {64, 128, 256}) for (bool per_head : {false, true}) for (int ns : {2, 3}) for (int kind : {0, 1, 2}) {
        attn_case ac = {D, 2, 4, 900, 1 + ns % 2, kind ? 256 : 100, per_head, D == 128 ? 1 : 0, true, 0.0f};
        ac.ns = ns;
        if (kind) { ac.n_keep = 64; ac.n_lead = per_head ? 16 : 0; ac.rr = kind == 2; }
        run_attn(ac, rng, true);
    }
    for (int pool : {256, 1024, 4096, 8192}) for (bool per_head : {false, true}) {
        if (quick && pool > 1024) continue;
        attn_case ac = {128, 8, 4, quick ? 4096 : 32768, 1, pool, per_head, 1, true, 0.0f};
        ac.n_keep = pool/4;
        run_attn(ac, rng, true);
        ac.n_keep = 1; ac.n_lead = 1; ac.kt = 4;
        run_attn(ac, rng, true);
    }
    printf("%d checks, %d failed (%d select cases by both distance scans)\n", g_checks, g_fail, g_checks_async);
    return g_fail ? 1 : 0;
}

static int do_bench() {
    std::mt19937 rng(1);
    cudaDeviceProp prop; CK(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
    printf("times in us per call, CUDA graph replays\n");
    printf("dist: the register scan, async: the async scan (v12); select: the op, with %s\n",
           harness_async_device() && adamas_select_async_env() ? "the async scan" : "the register scan");
    printf("| n_kv | heads q/kv | budget | mode | select | (dist | async | emit) | codes MiB | async GB/s | attn f16 | select 4x | rerank attn f16 |\n|---:|---:|---:|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    const char * only = getenv("ADAMAS_HARNESS_NKV"); // one cache size only (a short device call)
    for (int n_kv : {8192, 32768, 131072}) for (int n_head_kv : {32, 8}) for (int budget : {64, 256, 1024}) {
        for (bool group : {true, false}) {
            if (!group && n_head_kv == 32) continue;
            if (only && atoi(only) != n_kv) continue;
            float ms_s[4] = {0, 0, 0, 0}, ms_a = 0, ms_s4[4] = {0, 0, 0, 0}, ms_r = 0;
            run_select({128, n_head_kv, 32/n_head_kv, n_kv, 1, budget, group, 1, 0, true}, rng, false, ms_s);
            run_attn({128, n_head_kv, 32/n_head_kv, std::min(n_kv, 32768), 1, budget, !group, ADAMAS_KV_F16, true, 0.0f}, rng, false, &ms_a);
            // rerank 4: a pool of 4 x budget, the budget kept
            run_select({128, n_head_kv, 32/n_head_kv, n_kv, 1, 4*budget, group, 1, 0, true}, rng, false, ms_s4);
            attn_case rc = {128, n_head_kv, 32/n_head_kv, std::min(n_kv, 32768), 1, 4*budget, !group, ADAMAS_KV_F16, true, 0.0f};
            rc.n_keep = budget;
            run_attn(rc, rng, false, &ms_r);
            const double mib = (double) n_kv*n_head_kv*32/1048576.0;
            printf("| %d | 32/%d | %d | %s | %.1f | %.1f | %.1f | %.1f | %.1f | %.0f | %.1f | %.1f | %.1f |\n", n_kv, n_head_kv, budget, group ? "group" : "head",
                   ms_s[0], ms_s[1], ms_s[3], ms_s[2], mib, ms_s[3] > 0 ? mib*1048576.0/(ms_s[3]*1e-6)/1e9 : 0.0, ms_a, ms_s4[0], ms_r);
        }
    }
    return 0;
}

// Issue 16's shapes: a sparse layer's kernels (the default selection: per-query-head rows, a pool of 4 x 64 by
// codes, the rerank attention keeping 64) for N streams (per-sequence caches, one decode query each) against one
// stream: whether N sequences cost N times one in the kernels, or where they cost more.
static int do_bench_streams() {
    std::mt19937 rng(1);
    cudaDeviceProp prop; CK(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s, %d SMs; times in us per call (CUDA graph replays), budget 64, pool 256 (rerank 4), head rows\n",
           prop.name, prop.multiProcessorCount);
    printf("| case | n_kv | heads q/kv | streams | select | rerank attn | layer | per stream | x one stream | codes GB/s |\n"
           "|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    struct shape { const char * name; int n_kv, n_head_kv, ns; };
    const shape shapes[] = { {"7B MHA", 32768, 32, 4}, {"8B GQA", 32768, 8, 8}, {"8B GQA", 131072, 8, 4}, {"8B GQA", 8192, 8, 16} };
    for (const shape & sh : shapes) {
        float one = 0;
        for (int ns : {1, sh.ns}) {
            float ms_s[4] = {0, 0, 0, 0}, ms_r = 0;
            sel_case sc = {128, sh.n_head_kv, 32/sh.n_head_kv, sh.n_kv, 1, 256, false, 1, 0, true};
            sc.ns = ns;
            run_select(sc, rng, false, ms_s);
            // the attention reads the budget's rows only: a smaller cache per stream times the same work
            attn_case rc = {128, sh.n_head_kv, 32/sh.n_head_kv, std::min(sh.n_kv, 8192), 1, 256, true, ADAMAS_KV_F16, true, 0.0f};
            rc.n_keep = 64; rc.ns = ns;
            run_attn(rc, rng, false, &ms_r);
            const float layer = ms_s[0] + ms_r;
            if (ns == 1) one = layer;
            const double gb = (double) ns*sh.n_kv*sh.n_head_kv*32/1e9;
            printf("| %s | %d | 32/%d | %d | %.1f | %.1f | %.1f | %.1f | %.2f | %.0f |\n", sh.name, sh.n_kv, sh.n_head_kv, ns,
                   ms_s[0], ms_r, layer, layer/ns, layer/(ns*one), gb/(ms_s[0]*1e-6));
        }
    }
    return 0;
}

// The distance kernel's shape (KV heads per block, rounds per block, pipelined loads) swept at the bench shapes;
// every variant's indices are compared with the op's own plan.
static int do_sweep() {
    cudaDeviceProp prop; CK(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
    printf("| n_kv | heads q/kv | mode | hb | rounds | pipe | blocks | dist us | GB/s | async us | select us | same |\n|---:|---:|:---|---:|---:|---:|---:|---:|---:|---:|---:|:---|\n");
    struct shape { int n_kv, n_head_kv; bool group; };
    for (const shape sh : { shape{32768, 32, true}, shape{32768, 8, false}, shape{131072, 32, true}, shape{131072, 8, false},
                            shape{32768, 8, true}, shape{8192, 32, true} }) {
        sel_case base = {128, sh.n_head_kv, 32/sh.n_head_kv, sh.n_kv, 1, 64, sh.group, 1, 0, true};
        std::vector<int32_t> want;
        float t0[4];
        int64_t nb0 = 0;
        { std::mt19937 rng(11); run_select(base, rng, false, t0, &want, &nb0); }
        const double mib = (double) sh.n_kv*sh.n_head_kv*32/1048576.0;
        printf("| %d | 32/%d | %s | plan | plan | plan | %lld | %.1f | %.0f | %.1f | %.1f | |\n", sh.n_kv, sh.n_head_kv, sh.group ? "group" : "head",
               (long long) nb0, t0[1], mib*1048576.0/(t0[1]*1e-6)/1e9, t0[3], t0[0]);
        for (int hb : {1, 2, 4, 8, 16, 32}) for (int rounds : {1, 2, 4, 8, 16, 32}) for (int pipe : {0, 1}) {
            if (sh.n_head_kv % hb) continue;
            if (adamas_select_dist_smem(128, 32/sh.n_head_kv, sh.group, adamas_select_nbins(128, 32/sh.n_head_kv, sh.group), hb) > ADAMAS_SELECT_MAX_SMEM) continue;
            sel_case sc = base; sc.hb = hb; sc.rounds = rounds; sc.pipe = pipe;
            std::vector<int32_t> got;
            float t[4];
            int64_t nb = 0;
            std::mt19937 rng(11);
            run_select(sc, rng, false, t, &got, &nb);
            printf("| %d | 32/%d | %s | %d | %d | %d | %lld | %.1f | %.0f | %.1f | %.1f | %s |\n", sh.n_kv, sh.n_head_kv, sh.group ? "group" : "head",
                   hb, rounds, pipe, (long long) nb, t[1], mib*1048576.0/(t[1]*1e-6)/1e9, t[3], t[0], got == want ? "yes" : "NO");
            if (got != want) g_fail++;
        }
    }
    return g_fail ? 1 : 0;
}

// Where the distance kernel's time goes: the op's plan at a few shapes, timed with stages left out (ABL bits of
// adamas_dist_count: 1 histogram atomics, 2 distance stores, 4 L1 arithmetic, 8 flush); 15 leaves the loads.
template <int ABL>
static float time_dist_abl(const adamas_select_args & a) {
    const size_t smem = adamas_select_dist_smem(128, a.n_gqa, a.group, a.nbins, a.hb);
    const dim3 grid((unsigned) (a.n_head_kv/a.hb), (unsigned) ((a.n_kv + a.chunk - 1)/a.chunk), (unsigned) (a.n_q*a.ns));
    return time_graph_us([&](cudaStream_t st) {
        if (a.pipe) {
            adamas_set_smem(adamas_select_dist_kernel<128, true, true, ABL>, smem);
            adamas_select_dist_kernel<128, true, true, ABL><<<grid, ADAMAS_SELECT_DIST_BLOCK, smem, st>>>(a);
        } else {
            adamas_set_smem(adamas_select_dist_kernel<128, true, false, ABL>, smem);
            adamas_select_dist_kernel<128, true, false, ABL><<<grid, ADAMAS_SELECT_DIST_BLOCK, smem, st>>>(a);
        }
    });
}

static int do_ablate() {
    printf("| n_kv | heads q/kv | mode | hb | chunk | pipe | all | -atomics | -stores | -L1 | -flush | -atomics-stores | loads only |\n"
           "|---:|---:|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    struct shape { int n_kv, n_head_kv; bool group; };
    for (const shape sh : { shape{32768, 32, true}, shape{32768, 8, false}, shape{131072, 32, true}, shape{131072, 8, false} }) {
        const int n_kv = sh.n_kv, nkvh = sh.n_head_kv, gqa = 32/nkvh, csz = 32;
        std::mt19937 rng(5);
        std::vector<uint8_t> qc, kc;
        make_codes(rng, 128, 32, 0, qc);
        make_codes(rng, 128, (int64_t) nkvh*n_kv, 0, kc);
        dbuf<uint8_t> dq(qc.size()); dq.up(qc);
        dbuf<uint8_t> dk(kc.size()); dk.up(kc);
        adamas_select_args a = {};
        a.qc = (const char *) dq.p; a.qnb1 = csz; a.qnb2 = csz*32; a.qnb3 = a.qnb2;
        a.kc = (const char *) dk.p; a.knb1 = csz; a.knb2 = (int64_t) csz*nkvh; a.knb3 = a.knb2*n_kv;
        a.n_head = 32; a.n_head_kv = nkvh; a.n_gqa = gqa; a.n_q = 1; a.ns = 1; a.n_kv = n_kv; a.mne3 = 1;
        a.group = sh.group; a.budget = 64; a.n_sel = sh.group ? nkvh : 32;
        a.nbins = adamas_select_nbins(128, gqa, sh.group); a.nrows = a.n_sel;
        a.dist_stride = adamas_select_dist_stride(n_kv);
        dbuf<uint16_t> ddist(a.nrows*a.dist_stride); dbuf<int32_t> dhist(a.nrows*a.nbins); dbuf<int32_t> dout(a.nrows*64);
        a.dist = ddist.p; a.hist = dhist.p; a.dst = (char *) dout.p; a.onb1 = 256; a.onb2 = a.onb1*a.n_sel; a.onb3 = a.onb2;
        { cudaDeviceProp prop; CK(cudaGetDeviceProperties(&prop, 0)); a.n_sm = prop.multiProcessorCount; }
        adamas_select_plan(a, 128);
        printf("| %d | 32/%d | %s | %d | %lld | %d | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f |\n", n_kv, nkvh, sh.group ? "group" : "head",
               a.hb, (long long) a.chunk, (int) a.pipe, time_dist_abl<0>(a), time_dist_abl<1>(a), time_dist_abl<2>(a), time_dist_abl<4>(a),
               time_dist_abl<8>(a), time_dist_abl<3>(a), time_dist_abl<15>(a));
    }
    return 0;
}

// Where the rerank's time goes (D = 128, per-head rows, F16 K/V, pool -> kept): each kernel alone, the rerank kernel
// with a stage left out, and empty kernels on the same grids (the launch and scheduling floor of a graph node).
static int do_rrablate() {
    printf("| n_kv | heads q/kv | pool -> kept | op (two kernels) | score | rerank | -radix | -V | -both | empty (rerank grid) | empty (score grid) | op (cluster) |\n"
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    struct shape { int n_kv, n_head_kv, pool, keep; };
    for (const shape sh : { shape{32768, 32, 256, 64}, shape{32768, 8, 256, 64}, shape{32768, 32, 1024, 256}, shape{8192, 32, 256, 64} }) {
        std::mt19937 rng(3);
        float t[9];
        for (int st = 0; st < 9; ++st) { // 8: the op again, through the cluster kernel (pools it holds; else the same)
            attn_case ac = {128, sh.n_head_kv, 32/sh.n_head_kv, sh.n_kv, 1, sh.pool, true, ADAMAS_KV_F16, true, 0.0f};
            ac.n_keep = sh.keep; ac.stage = st == 8 ? 0 : st; ac.rr = st == 8 ? 1 : 0;
            run_attn(ac, rng, false, &t[st]);
        }
        printf("| %d | 32/%d | %d -> %d | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f |\n", sh.n_kv, sh.n_head_kv, sh.pool, sh.keep,
               t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8]);
    }
    return 0;
}

int main(int argc, char ** argv) {
    setvbuf(stdout, nullptr, _IOLBF, 0); // line by line into a file too: a run cut by a timeout keeps what it printed
    const std::string cmd = argc > 1 ? argv[1] : "check";
    // check SEED quick: the rerank's large pools left out (for the sanitizers)
    if (cmd == "check") return do_check(argc > 2 ? (unsigned) atoi(argv[2]) : 42u, argc > 3 && std::string(argv[3]) == "quick");
    if (cmd == "bench") return do_bench();
    if (cmd == "streams") return do_bench_streams();
    if (cmd == "sweep") return do_sweep();
    if (cmd == "ablate") return do_ablate();
    if (cmd == "rrablate") return do_rrablate();
    if (cmd == "one" && argc >= 6) { // one select and one attention launch, for a profiler
        std::mt19937 rng(1);
        const int n_kv = atoi(argv[2]), n_head_kv = atoi(argv[3]), budget = atoi(argv[4]);
        const bool group = std::string(argv[5]) == "group";
        sel_case sc = {128, n_head_kv, 32/n_head_kv, n_kv, 1, budget, group, 0, 0, true};
        if (argc >= 9 && atoi(argv[6]) > 0) { sc.hb = atoi(argv[6]); sc.rounds = atoi(argv[7]); sc.pipe = atoi(argv[8]); }
        run_select(sc, rng, false);
        attn_case ac = {128, n_head_kv, 32/n_head_kv, std::min(n_kv, 32768), 1, budget, !group, ADAMAS_KV_F16, false, 0.0f};
        ac.n_keep = argc >= 10 ? atoi(argv[9]) : 0; // KEEP > 0: the rerank attention, the budget its pool
        run_attn(ac, rng, false);
        return 0;
    }
    fprintf(stderr, "usage: %s check [seed] | bench | streams | sweep | ablate | rrablate | one N_KV N_HEAD_KV BUDGET group|head [HB ROUNDS PIPE [KEEP]] (HB 0: the op's plan)\n", argv[0]);
    return 2;
}
