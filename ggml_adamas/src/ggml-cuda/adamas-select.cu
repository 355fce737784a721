// GGML_OP_ADAMAS_SELECT on CUDA, in two kernels and no host synchronisation (CUDA graphs capture it):
//
//   distances: grid (cell chunk, KV head, query x stream). A block loads the query codes of the KV head's
//              query heads into shared memory and, per cell, the key code once: HEAD mode gives one distance
//              per query head (one selection row each), GROUP mode their sum (one row). Each visible cell's
//              distance + 1 goes to a uint16 buffer (0 for a +INF cell, 0xFFFF for a -INF one) and into a
//              shared-memory histogram per row, added to the row's global histogram at the end.
//   emit:      one block per selection row. A scan of the histogram finds the threshold distance d* at which
//              the count reaches the budget; one pass over the row's distances, from the highest cell down,
//              compacts the cells below d* and the highest cells at d* (block prefix sums keep that order);
//              the at most `budget` candidates are ranked by (distance asc, cell desc): by counting for up to
//              one per thread, else by a bitonic sort in shared memory.
//
// The result is the CPU kernel's exactly: same distances, same tie rule. O(n_kv) work, no global sort.
//
// With a candidate list (ggml_adamas_select_cells) both kernels run over list positions instead of cells: the
// distance of position j of a row is that of the cell its list holds there (-1: none), the emit compacts by
// position from the highest down (the highest cell down: the list is increasing) and writes the listed cell.
// Work and scratch are then n_cand per row, not n_kv.

#include "adamas-common.cuh"
#ifndef ADAMAS_CUDA_STANDALONE
#include "adamas-select.cuh"
#include "ggml-adamas.h"
#endif

#define ADAMAS_SELECT_DIST_CELLS_T 4    // cells per thread of a distance block (one round)
#define ADAMAS_SELECT_DIST_BLOCK 256    // threads per distance block
#define ADAMAS_SELECT_EMIT_BLOCK 512    // threads per emit block (one row)
#define ADAMAS_SELECT_EMIT_PER_T 16     // cells per thread and emit tile (two 16-byte loads)
#define ADAMAS_SELECT_MAX_SORT   16384  // candidates the emit block sorts in shared memory (bounds the budget)
#define ADAMAS_SELECT_MAX_SMEM   (160*1024)
#define ADAMAS_SELECT_STAGE_BYTES (16*1024) // codes of one stage of the async distance scan (64 bytes a thread)
#define ADAMAS_SELECT_STAGES     3      // its ring: two stages in flight while one is counted

// cells per thread and round of a distance block, their loads issued together (D = 256: registers allow 2)
static constexpr __host__ __device__ int adamas_select_du(int D) {
    return D >= 256 ? 2 : ADAMAS_SELECT_DIST_CELLS_T;
}

struct adamas_select_args {
    const char * qc;  int64_t qnb1, qnb2, qnb3;   // query codes [D/4, n_head, n_q, ns]
    const char * kc;  int64_t knb1, knb2, knb3;   // key codes   [D/4, n_head_kv, n_kv, ns]
    const char * mask; bool mask_f16; int64_t mnb1, mnb3, mne3;
    const char * cells; int64_t cnb1, cnb2;       // I32 candidate lists [n_cand, n_q, ns] or NULL

    int64_t n_head, n_head_kv, n_gqa, n_q, ns;
    int64_t n_kv;      // positions ranked per row: the cells of kc, or n_cand with a list
    bool    group;
    int     budget;
    int64_t n_sel;     // selection rows per (query, stream)
    int64_t nbins;     // histogram bins per row (adamas_select_nbins)
    int64_t nrows;
    int     n_sm;      // multiprocessors of the device (sizes the distance grid)
    size_t  smem_max;  // shared memory a block of the device may opt into (0: ADAMAS_SELECT_MAX_SMEM)
    int     hb;        // KV heads per distance block (adamas_select_hb)
    int64_t chunk;     // cells per distance block
    bool    pipe;      // distance loop loads the next round before counting this one (adamas_select_plan)
    bool    async_ok;  // the device runs cp.async (8.0+, compiled for) and GGML_CUDA_ADAMAS_DIST_ASYNC=1
    bool    par_rank;  // the emit ranks with several threads a key (adamas_par_rank_env)

    uint16_t * dist;  int64_t dist_stride;        // [nrows][dist_stride], dist_stride a multiple of EMIT_PER_T
    int32_t  * hist;                              // [nrows][nbins], zeroed before the distance kernel

    char *  dst;  int64_t onb1, onb2, onb3;       // I32 [budget, n_sel, n_q, ns]
};

// One plane word pair of a code. VEC: 16-byte (8-byte for D = 32) loads; else 4-byte ones (any 4-aligned view).
template <int D, bool VEC>
static __device__ __forceinline__ void adamas_load_code(const char * p, uint32_t (&w)[D/16]) {
    constexpr int NW = D/16; // 32-bit words of both planes
    if constexpr (VEC && NW >= 4) {
#pragma unroll
        for (int i = 0; i < NW/4; ++i) {
            const uint4 v = ((const uint4 *) p)[i];
            w[4*i + 0] = v.x; w[4*i + 1] = v.y; w[4*i + 2] = v.z; w[4*i + 3] = v.w;
        }
    } else if constexpr (VEC) {
        const uint2 v = *(const uint2 *) p;
        w[0] = v.x; w[1] = v.y;
    } else {
#pragma unroll
        for (int i = 0; i < NW; ++i) {
            w[i] = ((const uint32_t *) p)[i];
        }
    }
}

// exact L1 between two codes (ggml-adamas.h): per word popc(S ^ mq ^ mk) + 2*popc(S & (mq | mk)): two popcounts
// (a quarter-rate instruction) and two LOP3s; the three-popcount form made the L1 the GQA head mode's bottleneck
template <int D>
static __device__ __forceinline__ uint32_t adamas_l1(const uint32_t * q, const uint32_t (&k)[D/16]) {
    constexpr int P = D/32; // words per plane
    uint32_t d = 0;
#pragma unroll
    for (int i = 0; i < P; ++i) {
        const uint32_t S = q[i] ^ k[i];
        d += __popc(S ^ q[P + i] ^ k[P + i]) + 2*__popc(S & (q[P + i] | k[P + i]));
    }
    return d;
}

// class of a cell by its mask value: 1 -INF, 2 +INF, else 0 (ranked)
static __device__ __forceinline__ int adamas_mask_cls(const char * mrow, bool mask_f16, int c) {
    const uint32_t mv = adamas_mask_bits(mrow, mask_f16, c);
    return mv == (mask_f16 ? ADAMAS_F16_NINF : ADAMAS_F32_NINF) ? 1 : mv == (mask_f16 ? ADAMAS_F16_PINF : ADAMAS_F32_PINF) ? 2 : 0;
}

// One round of a distance block: DU positions per thread, step apart, from position cb (32-bit cell indices:
// the op refuses n_kv >= INT32_MAX); a position is a cell, or with a list (crow) the cell the list holds there.
// cls: 0 ranked, 1 -INF (or a -1 list entry), 2 +INF, 3 past the chunk.
template <int D, bool VEC, int DU>
static __device__ __forceinline__ void adamas_dist_load(const char * kb, int64_t knb2, const char * mrow, bool mask_f16,
        const int32_t * crow, int cb, int step, int c1, uint32_t (&k)[DU][D/16], int (&cls)[DU]) {
#pragma unroll
    for (int u = 0; u < DU; ++u) {
        const int j = cb + u*step;
        const int c = j < c1 && crow ? crow[j] : j;
        cls[u] = j >= c1 ? 3 : c < 0 ? 1 : 0;
        if (cls[u] == 0) {
            // the code load does not wait for the mask: masked cells are few (padding, other sequences)
            adamas_load_code<D, VEC>(kb + (int64_t) c*knb2, k[u]);
            if (mrow) {
                cls[u] = adamas_mask_cls(mrow, mask_f16, c);
            }
        }
    }
}

// mask classes of DU cells, step apart from cb (no list): 3 past the chunk, else adamas_mask_cls's
template <int DU>
static __device__ __forceinline__ void adamas_dist_cls(const char * mrow, bool mask_f16, int cb, int step, int c1, int (&cls)[DU]) {
#pragma unroll
    for (int u = 0; u < DU; ++u) {
        const int c = cb + u*step;
        cls[u] = c >= c1 ? 3 : mrow ? adamas_mask_cls(mrow, mask_f16, c) : 0;
    }
}

// The round's distances: to the distance rows drow (nh of them, ds apart) and the block's histograms hrow (nh
// rows of nbins); lo/hi track the bins used. GROUP sums the g query heads' distances into one row.
// ABL (the harness's ablations only; 0 in the op) leaves out: 1 the histogram atomics, 2 the distance stores,
// 4 the L1 arithmetic (a byte of the code instead), 8 the flush to the global histograms.
template <int D, int DU, int ABL = 0>
static __device__ __forceinline__ void adamas_dist_count(bool group, const uint32_t * qh, int * hrow, uint16_t * drow,
        int64_t ds, int g, int nh, int nbins, int cb, int step, const uint32_t (&k)[DU][D/16], const int (&cls)[DU],
        int & lo, int & hi) {
    constexpr int NW = D/16;
#pragma unroll
    for (int u = 0; u < DU; ++u) {
        const int c = cb + u*step;
        if (cls[u] == 3) {
            continue;
        }
        if (cls[u] != 0) {
            for (int r = 0; r < nh; ++r) {
                drow[r*ds + c] = cls[u] == 1 ? ADAMAS_DIST_NONE : 0;
                if (cls[u] == 2) {
                    atomicAdd(&hrow[r*nbins], 1);
                    lo = 0;
                }
            }
            continue;
        }
        if (group) {
            int d = 1;
            for (int j = 0; j < g; ++j) {
                d += ABL & 4 ? (int) ((k[u][0] >> (8*j)) & 0x3F) : (int) adamas_l1<D>(qh + j*NW, k[u]);
            }
            if constexpr (!(ABL & 2)) {
                drow[c] = (uint16_t) d;
            }
            if constexpr (!(ABL & 1)) {
                atomicAdd(&hrow[d], 1);
                lo = min(lo, d);
                hi = max(hi, d);
            } else {
                lo ^= d; // keeps the distance alive
            }
        } else {
            uint16_t * dj = drow;
            int      * hj = hrow;
            for (int j = 0; j < g; ++j, dj += ds, hj += nbins) {
                const int d = 1 + (ABL & 4 ? (int) ((k[u][0] >> (8*j)) & 0x3F) : (int) adamas_l1<D>(qh + j*NW, k[u]));
                if constexpr (!(ABL & 2)) {
                    dj[c] = (uint16_t) d;
                }
                if constexpr (!(ABL & 1)) {
                    atomicAdd(&hj[d], 1);
                    lo = min(lo, d);
                    hi = max(hi, d);
                } else {
                    lo ^= d;
                }
            }
        }
    }
}

// A distance block's place in the grid (KV head block, cell chunk, query x stream) and shared memory, the same
// for both scans. HB adjacent KV heads per block, a thread per (cell, head) with the head fastest: a cell's codes
// of all KV heads are contiguous in the cache row, so HB threads read HB*D/4 contiguous bytes (whole DRAM bursts,
// where one head's 32 bytes alone would waste half of each).
struct adamas_dist_blk {
    int     HB, g, nh, nbins, c0, c1, hb, step;
    int64_t kvh0, iq, is, row0;
    uint32_t * qw;   // HB*g codes of NW words
    int      * hs;   // HB*nh rows of nbins
    int      * rlo;  // per KV head: smallest and largest bin used
    int      * rhi;
    const char    * mrow;
    const int32_t * crow;
    const char    * kb;    // this thread's KV head's codes of cell 0
    const uint32_t * qh;   // its query heads' codes
    int      * hrow;       // its histogram rows
    uint16_t * drow;       // its distance rows
};

template <int D>
static __device__ __forceinline__ adamas_dist_blk adamas_dist_blk_init(const adamas_select_args & a, uint32_t * smem) {
    constexpr int NW = D/16;
    adamas_dist_blk b;
    b.HB    = a.hb;
    b.kvh0  = (int64_t) blockIdx.x*b.HB;
    b.iq    = blockIdx.z % a.n_q;
    b.is    = blockIdx.z / a.n_q;
    b.c0    = (int) (blockIdx.y*a.chunk);
    b.c1    = (int) min((int64_t) b.c0 + a.chunk, a.n_kv);
    b.g     = (int) a.n_gqa;                 // query heads of a KV head
    b.nh    = a.group ? 1 : b.g;             // histogram rows per KV head
    b.nbins = (int) a.nbins;
    b.qw    = smem;
    b.hs    = (int *) (b.qw + b.HB*b.g*NW);
    b.rlo   = b.hs + b.HB*b.nh*b.nbins;
    b.rhi   = b.rlo + b.HB;

    b.hb    = threadIdx.x % b.HB;
    b.step  = blockDim.x / b.HB;             // cells per round and unroll slot
    const int64_t kvh = b.kvh0 + b.hb;
    b.row0  = (a.group ? kvh : kvh*b.g) + a.n_sel*(b.iq + a.n_q*b.is);
    b.mrow  = a.mask ? a.mask + b.iq*a.mnb1 + (b.is % a.mne3)*a.mnb3 : nullptr;
    b.crow  = a.cells ? (const int32_t *) (a.cells + b.iq*a.cnb1 + b.is*a.cnb2) : nullptr;
    b.kb    = a.kc + kvh*a.knb1 + b.is*a.knb3;
    b.qh    = b.qw + b.hb*b.g*NW;
    b.hrow  = b.hs + b.hb*b.nh*b.nbins;
    b.drow  = a.dist + b.row0*a.dist_stride;
    return b;
}

// the query codes into shared memory, the histograms zeroed
template <int D>
static __device__ __forceinline__ void adamas_dist_setup(const adamas_select_args & a, const adamas_dist_blk & b) {
    constexpr int NW = D/16;
    for (int k = threadIdx.x; k < b.HB*b.g*NW; k += blockDim.x) {
        b.qw[k] = ((const uint32_t *) (a.qc + (b.kvh0*b.g + k/NW)*a.qnb1 + b.iq*a.qnb2 + b.is*a.qnb3))[k % NW];
    }
    for (int k = threadIdx.x; k < b.HB*b.nh*b.nbins; k += blockDim.x) {
        b.hs[k] = 0;
    }
    if (threadIdx.x < b.HB) {
        b.rlo[threadIdx.x] = INT_MAX;
        b.rhi[threadIdx.x] = -1;
    }
    __syncthreads();
}

// the block's histograms into the global ones (lo/hi: the bins this thread used)
template <int ABL>
static __device__ __forceinline__ void adamas_dist_flush(const adamas_select_args & a, const adamas_dist_blk & b, int lo, int hi) {
    if (lo <= hi || lo == 0) {
        atomicMin(&b.rlo[b.hb], lo);
        atomicMax(&b.rhi[b.hb], max(hi, lo));
    }
    __syncthreads();

    if constexpr (ABL & 8) {
        if (lo == 12345) { a.hist[0] = hi; } // keeps the work alive
    } else {
        // only the bins the block used go to the global histograms: a warp per histogram row, its lanes over the
        // row's used bins
        const int lane = threadIdx.x % WARP_SIZE;
        for (int r = threadIdx.x / WARP_SIZE; r < b.HB*b.nh; r += blockDim.x / WARP_SIZE) {
            const int h   = r / b.nh;
            const int blo = b.rlo[h];
            const int bhi = b.rhi[h];
            if (blo > bhi) {
                continue; // no visible cell in the block (blo is INT_MAX)
            }
            const int64_t row = (a.group ? b.kvh0 + r : b.kvh0*b.g + r) + a.n_sel*(b.iq + a.n_q*b.is);
            int32_t   * gh = a.hist + row*b.nbins;
            const int * sh = b.hs + r*b.nbins;
            for (int bin = blo + lane; bin <= bhi; bin += WARP_SIZE) {
                const int v = sh[bin];
                if (v != 0) {
                    atomicAdd(&gh[bin], v);
                }
            }
        }
    }
}

// The register scan. PIPE: the next round's codes are loaded before this round's distances are counted (two
// rounds of registers).
template <int D, bool VEC, bool PIPE, int ABL = 0>
static __global__ void __launch_bounds__(ADAMAS_SELECT_DIST_BLOCK, PIPE ? 2 : 3) // more blocks: more loads in flight
adamas_select_dist_kernel(const adamas_select_args a) {
    constexpr int NW = D/16;
    constexpr int DU = adamas_select_du(D);

    extern __shared__ uint32_t smem[];
    const adamas_dist_blk b = adamas_dist_blk_init<D>(a, smem);
    adamas_dist_setup<D>(a, b);

    const int c1   = b.c1;
    const int step = b.step;
    int lo = INT_MAX, hi = -1;

    if constexpr (PIPE) {
        uint32_t k[DU][NW];
        int      cls[DU];
        int      cb = b.c0 + (int) threadIdx.x / b.HB;
        adamas_dist_load<D, VEC, DU>(b.kb, a.knb2, b.mrow, a.mask_f16, b.crow, cb, step, c1, k, cls);
        for (; cb < c1; cb += DU*step) {
            uint32_t kn[DU][NW];
            int      clsn[DU];
            adamas_dist_load<D, VEC, DU>(b.kb, a.knb2, b.mrow, a.mask_f16, b.crow, cb + DU*step, step, c1, kn, clsn);
            adamas_dist_count<D, DU, ABL>(a.group, b.qh, b.hrow, b.drow, a.dist_stride, b.g, b.nh, b.nbins, cb, step, k, cls, lo, hi);
#pragma unroll
            for (int u = 0; u < DU; ++u) {
                cls[u] = clsn[u];
#pragma unroll
                for (int w = 0; w < NW; ++w) {
                    k[u][w] = kn[u][w];
                }
            }
        }
    } else {
        for (int cb = b.c0 + (int) threadIdx.x / b.HB; cb < c1; cb += DU*step) {
            uint32_t k[DU][NW];
            int      cls[DU];
            adamas_dist_load<D, VEC, DU>(b.kb, a.knb2, b.mrow, a.mask_f16, b.crow, cb, step, c1, k, cls);
            adamas_dist_count<D, DU, ABL>(a.group, b.qh, b.hrow, b.drow, a.dist_stride, b.g, b.nh, b.nbins, cb, step, k, cls, lo, hi);
        }
    }
    adamas_dist_flush<ABL>(a, b, lo, hi);
}

// 16-byte chunk of piece j of slot s of a stage (a slot: one (cell, KV head) code of P pieces). The XOR spreads
// the 8 chunks a quarter-warp reads (8 slots, same piece) over all 32 banks; a quarter-warp's copies (8
// consecutive pieces) stay a permutation of 8 consecutive chunks.
template <int P>
static __device__ __forceinline__ int adamas_stage_chunk(int s, int j) {
    return s*P + (j ^ ((s/(8/P)) % P));
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800 && !defined(GGML_USE_HIP) && !defined(GGML_USE_MUSA)
#define ADAMAS_SELECT_ASYNC_BODY
#endif

// The async scan (v12, docs/perf-notes.md): the register scan keeps at most two rounds of a thread's codes in
// flight and its warps stall on their own loads (~54% of DRAM bandwidth). Here the block copies each stage's
// codes with cp.async into a ring of ADAMAS_SELECT_STAGES stages in shared memory, two stages ahead of the one
// it counts, each thread copying 16-byte pieces of other threads' cells so that the copies are coalesced; the
// mask classes come a stage ahead in registers from the counting thread; the counting is the register scan's.
// Only for 16-byte aligned views, D >= 64, no candidate list and 8.0+ (the host checks: adamas_select_dist_async).
// Three blocks an SM: the shared memory allows them (61 KiB at D = 128, MHA) and the registers too (80, no
// spills at sm_90), for grids past the plan's two blocks per SM.
template <int D, int ABL = 0>
static __global__ void __launch_bounds__(ADAMAS_SELECT_DIST_BLOCK, 3)
adamas_select_dist_async_kernel(const adamas_select_args a) {
#ifdef ADAMAS_SELECT_ASYNC_BODY
    constexpr int NW  = D/16;
    constexpr int P   = D/64;                    // 16-byte pieces of a code
    constexpr int SU  = ADAMAS_SELECT_STAGE_BYTES/(ADAMAS_SELECT_DIST_BLOCK*(D/4)); // cells per thread and stage:
                                                 // 4, 2, 1 at D = 64, 128, 256 (a stage is 16 KiB at every D)
    constexpr int NT  = ADAMAS_SELECT_DIST_BLOCK;
    constexpr int NS  = ADAMAS_SELECT_STAGES;
    constexpr int SQ  = ADAMAS_SELECT_STAGE_BYTES/16; // 16-byte chunks of a stage
    constexpr int CPT = SQ/NT;                   // pieces a thread copies per stage (4)
    static_assert(SU >= 1 && SQ == NT*SU*P && CPT*NT == SQ, "stage shape");

    extern __shared__ uint4 ring[];              // NS stages, then the register scan's shared memory
    const adamas_dist_blk b = adamas_dist_blk_init<D>(a, (uint32_t *) (ring + NS*SQ));
    const int c0   = b.c0;
    const int c1   = b.c1;
    const int HB   = b.HB;
    const int step = b.step;
    const int sc   = step*SU;                    // cells of a stage

    // copies: pieces t + NT*r (r < CPT) of each stage, ordered (cell, KV head, piece): a warp copies whole runs
    // of HB*D/4 contiguous bytes, one a cell, where the heads are contiguous. The thread's cell, head and piece are the same in every
    // stage and r only moves the cell by cr, so one source pointer serves them all (its address from the
    // strides: knb1 need not be D/4).
    const int t  = threadIdx.x;
    const int cr = NT/(HB*P);                    // cells between a thread's pieces of a stage
    const int ci = t/(HB*P);                     // its first piece's cell in the stage
    const char * src = a.kc + (b.kvh0 + (t/P) % HB)*a.knb1 + b.is*a.knb3 + (int64_t) (c0 + ci)*a.knb2 + (t % P)*16;
    const int64_t src_r = (int64_t) cr*a.knb2;
    const int64_t src_s = (int64_t) sc*a.knb2;
    const uint32_t dst = (uint32_t) __cvta_generic_to_shared(ring) + 16*adamas_stage_chunk<P>(t/P, t % P);
    // piece t + NT*r lands at chunk adamas_stage_chunk(t/P, t % P) + NT*r: NT*r/P slots on, the swizzle's period
    // (8 slots) divides that

    const int nst = (c1 - c0 + sc - 1)/sc;
    int issued = 0;                              // stages copied or skipped so far
    // the copies of the next stage into its slot; a group committed even when empty, so that stage s is always
    // the group wait_group NS - 2 leaves complete
    auto issue = [&]() {
        if (issued < nst) {
            const int cb = c0 + issued*sc + ci;
            const uint32_t d = dst + (uint32_t) ((issued % NS)*ADAMAS_SELECT_STAGE_BYTES);
#pragma unroll
            for (int r = 0; r < CPT; ++r) {
                if (cb + r*cr < c1) { // the last stage may be partial: nothing past the chunk
                    asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16;"
                                 : : "r"(d + r*NT*16), "l"(src + r*src_r) : "memory");
                }
            }
            src += src_s;
        }
        issued++;
        asm volatile("cp.async.commit_group;" : : : "memory");
    };
#pragma unroll
    for (int s = 0; s < NS - 1; ++s) {
        issue(); // before the setup: the first stages are in flight while the query codes load
    }
    adamas_dist_setup<D>(a, b);

    // counting: the register scan's cells (t/HB + u*step of a stage, u < SU) and head (t % HB); slot t + NT*u
    const int cq = t/HB;
    const uint4 * rs = ring + t*P;
    const int     jx = (t/(8/P)) % P;            // adamas_stage_chunk's XOR for slot t (and t + NT*u)
    int cls[SU];
    adamas_dist_cls<SU>(b.mrow, a.mask_f16, c0 + cq, step, c1, cls);
    int lo = INT_MAX, hi = -1;
    for (int s = 0; s < nst; ++s) {
        asm volatile("cp.async.wait_group %0;" : : "n"(NS - 2) : "memory"); // this thread's copies of stage s
        __syncthreads(); // everyone's, and stage s - 1 is counted: its slot, the next stage's, is free
        issue();
        const int cb = c0 + s*sc + cq;
        int clsn[SU]; // the next stage's mask classes, a stage ahead
        adamas_dist_cls<SU>(b.mrow, a.mask_f16, cb + sc, step, c1, clsn);
        uint32_t k[SU][NW];
        const uint4 * rst = rs + (s % NS)*SQ;
#pragma unroll
        for (int u = 0; u < SU; ++u) {
            if (cls[u] == 0) { // other cells' slots are not read (past the chunk: never written)
#pragma unroll
                for (int j = 0; j < P; ++j) {
                    const uint4 v = rst[u*NT*P + (j ^ jx)];
                    k[u][4*j + 0] = v.x; k[u][4*j + 1] = v.y; k[u][4*j + 2] = v.z; k[u][4*j + 3] = v.w;
                }
            }
        }
        adamas_dist_count<D, SU, ABL>(a.group, b.qh, b.hrow, b.drow, a.dist_stride, b.g, b.nh, b.nbins, cb, step, k, cls, lo, hi);
#pragma unroll
        for (int u = 0; u < SU; ++u) {
            cls[u] = clsn[u];
        }
    }
    asm volatile("cp.async.wait_all;" : : : "memory"); // (only empty groups are left)
    adamas_dist_flush<ABL>(a, b, lo, hi);
#else
    (void) a;
#endif // ADAMAS_SELECT_ASYNC_BODY
}

// Exclusive prefix sum over the block (blockDim.x a multiple of 32, at most 1024); *total gets the block's sum.
static __device__ __forceinline__ int adamas_block_scan(int v, int * total, int * sh /* 33 ints */) {
    const int lane = threadIdx.x % WARP_SIZE;
    const int warp = threadIdx.x / WARP_SIZE;
    int incl = v;
#pragma unroll
    for (int o = 1; o < WARP_SIZE; o <<= 1) {
        const int t = __shfl_up_sync(0xFFFFFFFF, incl, o);
        if (lane >= o) {
            incl += t;
        }
    }
    if (lane == WARP_SIZE - 1) {
        sh[warp] = incl;
    }
    __syncthreads();
    if (warp == 0) {
        const int nw = blockDim.x / WARP_SIZE;
        int s = lane < nw ? sh[lane] : 0;
#pragma unroll
        for (int o = 1; o < WARP_SIZE; o <<= 1) {
            const int t = __shfl_up_sync(0xFFFFFFFF, s, o);
            if (lane >= o) {
                s += t;
            }
        }
        if (lane < nw) {
            sh[lane] = s; // inclusive prefix of warp sums
        }
        if (lane == nw - 1) {
            sh[32] = s;
        }
    }
    __syncthreads();
    const int excl = incl - v + (warp > 0 ? sh[warp - 1] : 0);
    *total = sh[32];
    __syncthreads(); // sh is reused by the next call
    return excl;
}

static __global__ void adamas_select_emit_kernel(const adamas_select_args a, const int n_sort) {
    extern __shared__ unsigned long long keys[]; // n_sort (a power of two >= the number of candidates)
    __shared__ int sh[33];
    __shared__ int s_dstar, s_below;

    const int64_t r  = blockIdx.x;
    const int64_t hs = r % a.n_sel;
    const int64_t iq = (r / a.n_sel) % a.n_q;
    const int64_t is = r / (a.n_sel*a.n_q);

    const int32_t  * hist = a.hist + r*a.nbins;
    const uint16_t * dist = a.dist + r*a.dist_stride;
    int32_t * out = (int32_t *) (a.dst + hs*a.onb1 + iq*a.onb2 + is*a.onb3);
    const int32_t * crow = a.cells ? (const int32_t *) (a.cells + iq*a.cnb1 + is*a.cnb2) : nullptr;

    // threshold d*: the first distance at which the running count reaches the budget; if it never does,
    // every visible cell is taken (n_out = all of them, d* = the largest distance present)
    if (threadIdx.x == 0) {
        s_dstar = 0;
        s_below = 0;
    }
    __syncthreads();
    int n_out = a.budget;
    {
        int before = 0;
        for (int64_t b0 = 0; b0 < a.nbins; b0 += blockDim.x) {
            const int64_t b = b0 + threadIdx.x;
            const int v = b < a.nbins ? hist[b] : 0;
            int total;
            const int excl = adamas_block_scan(v, &total, sh);
            if (v > 0 && before + excl < a.budget && before + excl + v >= a.budget) {
                s_dstar = (int) b;
                s_below = before + excl;
            }
            before += total;
            if (before >= a.budget) {
                break; // block-uniform
            }
        }
        if (before < a.budget) {
            n_out = before;
            // all visible cells: d* past the largest distance, so every one counts as below it
            if (threadIdx.x == 0) {
                s_dstar = (int) a.nbins;
                s_below = before;
            }
        }
    }
    __syncthreads();
    const int dstar  = s_dstar;
    const int below  = s_below;
    const int n_ties = n_out - below;

    // candidates, from the highest cell down: all below d*, the first n_ties at d*
    constexpr int PT = ADAMAS_SELECT_EMIT_PER_T;
    const int64_t tile  = (int64_t) blockDim.x*PT;
    const int64_t n_pad = (a.n_kv + PT - 1)/PT*PT;
    int found_lt = 0;
    int found_eq = 0;
    for (int64_t hi = n_pad; hi > 0 && n_out > 0; hi -= tile) {
        const int64_t cs = hi - (int64_t) PT*(threadIdx.x + 1); // this thread's PT cells: [cs, cs + PT)
        uint16_t d[PT];
        int n_lt = 0, n_eq = 0;
        if (cs >= 0) {
            uint4 v[PT/8];
#pragma unroll
            for (int i = 0; i < PT/8; ++i) {
                v[i] = ((const uint4 *) (dist + cs))[i];
            }
            const uint16_t * dv = (const uint16_t *) v;
#pragma unroll
            for (int i = 0; i < PT; ++i) {
                d[i] = cs + i < a.n_kv ? dv[i] : (uint16_t) ADAMAS_DIST_NONE;
                n_lt += d[i] <  dstar;
                n_eq += d[i] == dstar;
            }
        }
        int total;
        const int excl = adamas_block_scan((n_lt << 16) | n_eq, &total, sh);
        int pos_lt = found_lt + (excl >> 16);
        int pos_eq = found_eq + (excl & 0xFFFF);
        if (cs >= 0) {
#pragma unroll
            for (int i = PT - 1; i >= 0; --i) {
                const unsigned long long key = ((unsigned long long) d[i] << 32) | (uint32_t) ~(uint32_t) (cs + i);
                if (d[i] < dstar) {
                    keys[pos_lt++] = key;
                } else if (d[i] == dstar) {
                    if (pos_eq < n_ties) {
                        keys[below + pos_eq] = key;
                    }
                    pos_eq++;
                }
            }
        }
        found_lt += total >> 16;
        found_eq += total & 0xFFFF;
        if (found_lt >= below && found_eq >= n_ties) {
            break; // block-uniform
        }
    }
    __syncthreads();

    // ranking: ascending keys = distance asc, then cell desc (keys are distinct)
    if (n_out <= (int) blockDim.x) {
        // a candidate's rank is the number of smaller keys, counted by T threads (a power of two: the block's
        // threads over the candidates, at most a warp) in strided shares with 8 shared loads in flight, then
        // summed by shuffles. One thread walking all keys a dependent load at a time made the ranking most of
        // the emit's time (5.8, 11.2 us at pools 64, 256: docs/perf-notes.md, v13); that walk stays the path
        // while a.par_rank is off. Every thread takes part in the shuffles; those past the candidates count for
        // the last one and write nothing.
        const int np = n_out > 1 ? 1 << (32 - __clz(n_out - 1)) : 1;
        const int T  = a.par_rank ? min(WARP_SIZE, max(1, (int) blockDim.x/np)) : 1;
        const int c  = (int) threadIdx.x/T;
        const int l  = (int) threadIdx.x%T;
        const unsigned long long key = n_out > 0 ? keys[min(c, n_out - 1)] : 0;
        int rank = 0;
        if (a.par_rank) {
            for (int j0 = l; j0 < n_out; j0 += 8*T) {
                unsigned long long kj[8];
#pragma unroll
                for (int i = 0; i < 8; ++i) {
                    const int j = j0 + i*T;
                    kj[i] = j < n_out ? keys[j] : ~0ull; // ~0 is never smaller than a key
                }
#pragma unroll
                for (int i = 0; i < 8; ++i) {
                    rank += kj[i] < key;
                }
            }
        } else if (c < n_out) {
            for (int j = 0; j < n_out; ++j) {
                rank += keys[j] < key;
            }
        }
        for (int o = T/2; o > 0; o >>= 1) {
            rank += __shfl_xor_sync(0xFFFFFFFF, rank, o);
        }
        if (l == 0 && c < n_out) {
            const int32_t j = (int32_t) ~(uint32_t) (key & 0xFFFFFFFFull);
            out[rank] = crow ? crow[j] : j;
        }
        for (int j = n_out + threadIdx.x; j < a.budget; j += blockDim.x) {
            out[j] = -1;
        }
        return;
    }
    for (int i = n_out + threadIdx.x; i < n_sort; i += blockDim.x) {
        keys[i] = ~0ull;
    }
    __syncthreads();
    for (int k = 2; k <= n_sort; k <<= 1) {
        for (int j = k >> 1; j > 0; j >>= 1) {
            for (int i = threadIdx.x; i < n_sort; i += blockDim.x) {
                const int ixj = i ^ j;
                if (ixj > i) {
                    const unsigned long long x = keys[i];
                    const unsigned long long y = keys[ixj];
                    if ((x > y) == ((i & k) == 0)) {
                        keys[i]   = y;
                        keys[ixj] = x;
                    }
                }
            }
            __syncthreads();
        }
    }

    for (int j = threadIdx.x; j < a.budget; j += blockDim.x) {
        const int32_t p = j < n_out ? (int32_t) ~(uint32_t) (keys[j] & 0xFFFFFFFFull) : -1;
        out[j] = p >= 0 && crow ? crow[p] : p;
    }
}

static int adamas_next_pow2(int n) {
    int p = 1;
    while (p < n) {
        p <<= 1;
    }
    return p;
}

// histogram bins of a selection row: distances 0..3*D per query head (summed over the group in GROUP mode),
// stored + 1, and 0 for forced (+INF) cells
static int64_t adamas_select_nbins(int D, int64_t n_gqa, bool group) {
    return 3*(int64_t) D*(group ? n_gqa : 1) + 2;
}

static size_t adamas_select_dist_smem(int D, int64_t n_gqa, bool group, int64_t nbins, int hb) {
    return (size_t) hb*n_gqa*(D/16)*sizeof(uint32_t) + (size_t) hb*(group ? 1 : n_gqa)*nbins*sizeof(int)
         + 2*hb*sizeof(int);
}

// the async scan's: the ring first (16-byte aligned), then the register scan's
static size_t adamas_select_dist_async_smem(int D, int64_t n_gqa, bool group, int64_t nbins, int hb) {
    return (size_t) ADAMAS_SELECT_STAGES*ADAMAS_SELECT_STAGE_BYTES + adamas_select_dist_smem(D, n_gqa, group, nbins, hb);
}

// shared memory a distance block may use
static size_t adamas_select_smem_limit(const adamas_select_args & a) {
    return a.smem_max > 0 ? std::min<size_t>(a.smem_max, ADAMAS_SELECT_MAX_SMEM) : ADAMAS_SELECT_MAX_SMEM;
}

// GGML_CUDA_ADAMAS_DIST_ASYNC=1: the async scan where it applies (read once). Off by default until it has run on
// a GPU: it passed only compilation and a model of its indexing so far (docs/perf-notes.md, v12).
static bool adamas_select_async_env() {
    static const bool on = adamas_env_switch("GGML_CUDA_ADAMAS_DIST_ASYNC", false);
    return on;
}

// Whether the distance launch takes the async scan: a.async_ok, whole 16-byte pieces (D >= 64, a vector view),
// cells rather than a list (a list's cells are scattered, its rows not contiguous), a block's pieces a whole
// number of the threads' (hb a power of two up to 256/P) and the ring within the shared memory
static bool adamas_select_dist_async(const adamas_select_args & a, int D, bool vec) {
    return a.async_ok && D >= 64 && vec && !a.cells && a.hb >= 1 && ADAMAS_SELECT_DIST_BLOCK % (a.hb*(D/64)) == 0 &&
           adamas_select_dist_async_smem(D, a.n_gqa, a.group, a.nbins, a.hb) <= adamas_select_smem_limit(a);
}

// cells of one round of a distance block (adamas_select_du per thread)
static int64_t adamas_select_round(int hb, int D) {
    return (int64_t) (ADAMAS_SELECT_DIST_BLOCK/hb)*adamas_select_du(D);
}

// KV heads per distance block: 8 (256 contiguous bytes per cell at D = 128), 4 or 2 while the block's histograms
// stay small (they are zeroed and flushed per block), else 1. The H200 sweep (docs/perf-notes.md, v5) found the
// widest such block fastest at every shape it timed.
static int adamas_select_hb(int D, int64_t n_head_kv, int64_t n_gqa, bool group, int64_t nbins, size_t smem_max) {
    const int64_t rows = group ? 1 : n_gqa; // histogram rows per KV head
    for (int hb : { 8, 4, 2 }) {
        if (n_head_kv % hb == 0 && hb*rows*nbins <= 4096 &&
            adamas_select_dist_smem(D, n_gqa, group, nbins, hb) <= smem_max) {
            return hb;
        }
    }
    return 1;
}

template <int D, bool VEC>
static void adamas_select_dist_launch_v(const adamas_select_args & a, const dim3 grid, size_t smem, cudaStream_t stream) {
    if (a.pipe) {
        adamas_set_smem(adamas_select_dist_kernel<D, VEC, true>, smem);
        adamas_select_dist_kernel<D, VEC, true><<<grid, ADAMAS_SELECT_DIST_BLOCK, smem, stream>>>(a);
    } else {
        adamas_set_smem(adamas_select_dist_kernel<D, VEC, false>, smem);
        adamas_select_dist_kernel<D, VEC, false><<<grid, ADAMAS_SELECT_DIST_BLOCK, smem, stream>>>(a);
    }
}

template <int D>
static void adamas_select_dist_launch(const adamas_select_args & a, bool vec, cudaStream_t stream) {
    const dim3 grid((unsigned) (a.n_head_kv/a.hb), (unsigned) ((a.n_kv + a.chunk - 1)/a.chunk), (unsigned) (a.n_q*a.ns));
    if constexpr (D >= 64) {
        if (adamas_select_dist_async(a, D, vec)) {
            const size_t smem = adamas_select_dist_async_smem(D, a.n_gqa, a.group, a.nbins, a.hb);
            adamas_set_smem(adamas_select_dist_async_kernel<D>, smem);
            adamas_select_dist_async_kernel<D><<<grid, ADAMAS_SELECT_DIST_BLOCK, smem, stream>>>(a);
            return;
        }
    }
    const size_t smem = adamas_select_dist_smem(D, a.n_gqa, a.group, a.nbins, a.hb);
    if (vec) {
        adamas_select_dist_launch_v<D, true>(a, grid, smem, stream);
    } else {
        adamas_select_dist_launch_v<D, false>(a, grid, smem, stream);
    }
}

// The distance kernel's shape: a.hb, a.chunk (cells per block, a whole number of rounds) and a.pipe. The
// harness may change them before adamas_select_run (its sweep); the op takes them as they are.
static void adamas_select_plan(adamas_select_args & a, int D) {
    a.hb = adamas_select_hb(D, a.n_head_kv, a.n_gqa, a.group, a.nbins, adamas_select_smem_limit(a));
    // From the harness's sweep on the H200 (docs/perf-notes.md, v5): enough rounds per block that the grid is
    // about two blocks per SM, but at most 4 (longer blocks lose more than the flushes they save), the loads
    // pipelined where the grid fits in one wave of two blocks per SM (the registers allow no more). The async
    // scan takes the same plan: a round is one or two of its stages, so a chunk is whole stages (up to 8 a block).
    const int64_t round  = adamas_select_round(a.hb, D);
    const int64_t slots  = (int64_t) std::max(1, a.n_sm)*2;
    const int64_t cells  = a.n_kv*(a.n_head_kv/a.hb)*a.n_q*a.ns; // (cell, block of KV heads) pairs
    const int64_t rounds = std::max<int64_t>(1, std::min<int64_t>(4, (cells + slots*round - 1)/(slots*round)));
    a.chunk = rounds*round;
    const int64_t blocks = (a.n_head_kv/a.hb)*((a.n_kv + a.chunk - 1)/a.chunk)*a.n_q*a.ns;
    a.pipe = blocks <= slots;
}

// a.dist and a.hist must hold nrows*dist_stride uint16 and nrows*nbins int32; a.hb, a.chunk and a.pipe are set
static void adamas_select_run(const adamas_select_args & a, int D, bool vec, cudaStream_t stream) {
    if (a.nrows == 0) {
        return;
    }
    cudaMemsetAsync(a.hist, 0, a.nrows*a.nbins*sizeof(int32_t), stream);
    if (a.n_kv > 0) {
        switch (D) {
            case 32:  adamas_select_dist_launch<32> (a, vec, stream); break;
            case 64:  adamas_select_dist_launch<64> (a, vec, stream); break;
            case 128: adamas_select_dist_launch<128>(a, vec, stream); break;
            case 256: adamas_select_dist_launch<256>(a, vec, stream); break;
            default:  return; // refused by ggml_cuda_adamas_select_supported
        }
    }
    const int    n_sort = adamas_next_pow2((int) std::min<int64_t>(a.budget, a.n_kv > 0 ? a.n_kv : 1));
    const size_t smem   = (size_t) n_sort*sizeof(unsigned long long);
    adamas_set_smem(adamas_select_emit_kernel, smem);
    adamas_select_emit_kernel<<<(unsigned) a.nrows, ADAMAS_SELECT_EMIT_BLOCK, smem, stream>>>(a, n_sort);
}

static void adamas_select_launch(adamas_select_args & a, int D, bool vec, cudaStream_t stream) {
    adamas_select_plan(a, D);
    adamas_select_run(a, D, vec, stream);
}

static int64_t adamas_select_dist_stride(int64_t n_kv) {
    return (n_kv + ADAMAS_SELECT_EMIT_PER_T - 1)/ADAMAS_SELECT_EMIT_PER_T*ADAMAS_SELECT_EMIT_PER_T;
}

#ifndef ADAMAS_CUDA_STANDALONE

bool ggml_cuda_adamas_select_supported(int device, const ggml_tensor * op) {
    const ggml_tensor * qc   = op->src[0];
    const ggml_tensor * kc   = op->src[1];
    const ggml_tensor * cells = op->src[3]; // candidate lists: I32 rows, any n_cand (the constructor checks them)
    const int     D      = (int) (4*qc->ne[0]);
    const int     budget = ggml_get_op_params_i32(op, 0);
    const bool    group  = ggml_get_op_params_i32(op, 1) == GGML_ADAMAS_SELECT_GROUP;
    const int64_t n_gqa  = qc->ne[1]/kc->ne[1];
    const int64_t nbins  = adamas_select_nbins(D, n_gqa, group);
    // the candidates are sorted in shared memory, and the distance blocks hold their histograms there: both
    // within this device's limit (a smaller GPU refuses here instead of failing at launch); by the budget alone,
    // not the cache's current size, so that the answer does not change as the context grows
    const size_t smem_max = ggml_cuda_info().devices[device].smpbo;
    const int    n_sort   = adamas_next_pow2(std::max(1, budget));
    return ggml_adamas_supported_dim(D) && budget <= ADAMAS_SELECT_MAX_SORT &&
           (size_t) n_sort*sizeof(unsigned long long) <= smem_max &&
           adamas_select_dist_smem(D, n_gqa, group, nbins, 1) <= std::min<size_t>(smem_max, ADAMAS_SELECT_MAX_SMEM) &&
           kc->ne[2] < INT32_MAX && (!cells || cells->ne[0] < INT32_MAX);
}

void ggml_cuda_op_adamas_select(ggml_backend_cuda_context & ctx, ggml_tensor * dst) {
    const ggml_tensor * qc   = dst->src[0];
    const ggml_tensor * kc   = dst->src[1];
    const ggml_tensor * mask = dst->src[2];
    const ggml_tensor * cells = dst->src[3];

    const int D = (int) (4*qc->ne[0]);

    adamas_select_args a = {};
    a.qc   = (const char *) qc->data; a.qnb1 = qc->nb[1]; a.qnb2 = qc->nb[2]; a.qnb3 = qc->nb[3];
    a.kc   = (const char *) kc->data; a.knb1 = kc->nb[1]; a.knb2 = kc->nb[2]; a.knb3 = kc->nb[3];
    a.mask = mask ? (const char *) mask->data : nullptr;
    a.mask_f16 = mask && mask->type == GGML_TYPE_F16;
    a.mnb1 = mask ? mask->nb[1] : 0;
    a.mnb3 = mask ? mask->nb[3] : 0;
    a.mne3 = mask ? mask->ne[3] : 1;
    a.cells = cells ? (const char *) cells->data : nullptr;
    a.cnb1  = cells ? cells->nb[1] : 0;
    a.cnb2  = cells ? cells->nb[2] : 0;
    a.n_head    = qc->ne[1];
    a.n_head_kv = kc->ne[1];
    a.n_gqa     = a.n_head/a.n_head_kv;
    a.n_q       = qc->ne[2];
    a.ns        = qc->ne[3];
    a.n_kv      = cells ? cells->ne[0] : kc->ne[2]; // the positions ranked
    a.budget    = ggml_get_op_params_i32(dst, 0);
    a.group     = ggml_get_op_params_i32(dst, 1) == GGML_ADAMAS_SELECT_GROUP;
    a.n_sel     = a.group ? a.n_head_kv : a.n_head;
    a.nbins     = adamas_select_nbins(D, a.n_gqa, a.group);
    a.nrows     = a.n_sel*a.n_q*a.ns;
    a.dst  = (char *) dst->data; a.onb1 = dst->nb[1]; a.onb2 = dst->nb[2]; a.onb3 = dst->nb[3];
    a.n_sm = ggml_cuda_info().devices[ctx.device].nsm;
    a.smem_max = ggml_cuda_info().devices[ctx.device].smpbo;
    // the async distance scan where cp.async runs and the build holds its code (not a JIT of older archs' PTX)
    a.async_ok = cp_async_available(ggml_cuda_info().devices[ctx.device].cc) && adamas_select_async_env();
    a.par_rank = adamas_par_rank_env();
    GGML_ASSERT(a.nbins < ADAMAS_DIST_NONE);

    a.dist_stride = adamas_select_dist_stride(a.n_kv);
    ggml_cuda_pool_alloc<uint16_t> dist(ctx.pool(), a.nrows*a.dist_stride);
    ggml_cuda_pool_alloc<int32_t>  hist(ctx.pool(), a.nrows*a.nbins);
    a.dist = dist.get();
    a.hist = hist.get();

    // vector loads of whole codes where the view allows them
    const size_t align = D >= 64 ? 16 : 8;
    const bool vec = (uintptr_t) kc->data % align == 0 && kc->nb[1] % align == 0 && kc->nb[2] % align == 0 &&
                     kc->nb[3] % align == 0;
    GGML_ASSERT((uintptr_t) kc->data % 4 == 0 && kc->nb[1] % 4 == 0 && kc->nb[2] % 4 == 0 && kc->nb[3] % 4 == 0);
    GGML_ASSERT((uintptr_t) qc->data % 4 == 0 && qc->nb[1] % 4 == 0 && qc->nb[2] % 4 == 0 && qc->nb[3] % 4 == 0);

    adamas_select_launch(a, D, vec, ctx.stream());
}

#endif // ADAMAS_CUDA_STANDALONE
