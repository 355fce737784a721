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
                const uint32_t mv = adamas_mask_bits(mrow, mask_f16, c);
                cls[u] = mv == (mask_f16 ? ADAMAS_F16_NINF : ADAMAS_F32_NINF) ? 1
                       : mv == (mask_f16 ? ADAMAS_F16_PINF : ADAMAS_F32_PINF) ? 2 : 0;
            }
        }
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

// PIPE: the next round's codes are loaded before this round's distances are counted (two rounds of registers)
template <int D, bool VEC, bool PIPE, int ABL = 0>
static __global__ void __launch_bounds__(ADAMAS_SELECT_DIST_BLOCK, PIPE ? 2 : 3) // more blocks: more loads in flight
adamas_select_dist_kernel(const adamas_select_args a) {
    constexpr int NW = D/16;
    constexpr int DU = adamas_select_du(D);

    // HB adjacent KV heads per block, a thread per (cell, head) with the head fastest: a cell's codes of all KV
    // heads are contiguous in the cache row, so HB threads read HB*D/4 contiguous bytes (whole DRAM bursts,
    // where one head's 32 bytes alone would waste half of each)
    const int     HB    = a.hb;
    const int64_t kvh0  = (int64_t) blockIdx.x*HB;
    const int64_t iq    = blockIdx.z % a.n_q;
    const int64_t is    = blockIdx.z / a.n_q;
    const int     c0    = (int) (blockIdx.y*a.chunk);
    const int     c1    = (int) min((int64_t) c0 + a.chunk, a.n_kv);

    const int     g     = (int) a.n_gqa;                 // query heads of a KV head
    const int     nh    = a.group ? 1 : g;               // histogram rows per KV head
    const int     nbins = (int) a.nbins;
    const int     nhist = HB*nh*nbins;

    extern __shared__ uint32_t smem[];
    uint32_t * qw   = smem;                              // HB*g codes of NW words
    int      * hs   = (int *) (qw + HB*g*NW);            // HB*nh rows of nbins
    int      * rlo  = hs + nhist;                        // per KV head: smallest and largest bin used
    int      * rhi  = rlo + HB;

    for (int k = threadIdx.x; k < HB*g*NW; k += blockDim.x) {
        qw[k] = ((const uint32_t *) (a.qc + (kvh0*g + k/NW)*a.qnb1 + iq*a.qnb2 + is*a.qnb3))[k % NW];
    }
    for (int k = threadIdx.x; k < nhist; k += blockDim.x) {
        hs[k] = 0;
    }
    if (threadIdx.x < HB) {
        rlo[threadIdx.x] = INT_MAX;
        rhi[threadIdx.x] = -1;
    }
    __syncthreads();

    const int     hb    = threadIdx.x % HB;
    const int64_t kvh   = kvh0 + hb;
    const int     step  = blockDim.x / HB;              // cells per round and unroll slot
    const int64_t row0  = (a.group ? kvh : kvh*g) + a.n_sel*(iq + a.n_q*is);
    const char *  mrow  = a.mask ? a.mask + iq*a.mnb1 + (is % a.mne3)*a.mnb3 : nullptr;
    const int32_t * crow = a.cells ? (const int32_t *) (a.cells + iq*a.cnb1 + is*a.cnb2) : nullptr;
    const char *  kb    = a.kc + kvh*a.knb1 + is*a.knb3;
    const uint32_t * qh = qw + hb*g*NW;
    int      * hrow = hs + hb*nh*nbins;
    uint16_t * drow = a.dist + row0*a.dist_stride;
    int lo = INT_MAX, hi = -1;

    if constexpr (PIPE) {
        uint32_t k[DU][NW];
        int      cls[DU];
        int      cb = c0 + (int) threadIdx.x / HB;
        adamas_dist_load<D, VEC, DU>(kb, a.knb2, mrow, a.mask_f16, crow, cb, step, c1, k, cls);
        for (; cb < c1; cb += DU*step) {
            uint32_t kn[DU][NW];
            int      clsn[DU];
            adamas_dist_load<D, VEC, DU>(kb, a.knb2, mrow, a.mask_f16, crow, cb + DU*step, step, c1, kn, clsn);
            adamas_dist_count<D, DU, ABL>(a.group, qh, hrow, drow, a.dist_stride, g, nh, nbins, cb, step, k, cls, lo, hi);
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
        for (int cb = c0 + (int) threadIdx.x / HB; cb < c1; cb += DU*step) {
            uint32_t k[DU][NW];
            int      cls[DU];
            adamas_dist_load<D, VEC, DU>(kb, a.knb2, mrow, a.mask_f16, crow, cb, step, c1, k, cls);
            adamas_dist_count<D, DU, ABL>(a.group, qh, hrow, drow, a.dist_stride, g, nh, nbins, cb, step, k, cls, lo, hi);
        }
    }
    if (lo <= hi || lo == 0) {
        atomicMin(&rlo[hb], lo);
        atomicMax(&rhi[hb], max(hi, lo));
    }
    __syncthreads();

    if constexpr (ABL & 8) {
        if (lo == 12345) { a.hist[0] = hi; } // keeps the work alive
    } else {
        // only the bins the block used go to the global histograms: a warp per histogram row, its lanes over the
        // row's used bins
        const int lane = threadIdx.x % WARP_SIZE;
        for (int r = threadIdx.x / WARP_SIZE; r < HB*nh; r += blockDim.x / WARP_SIZE) {
            const int h   = r / nh;
            const int blo = rlo[h];
            const int bhi = rhi[h];
            if (blo > bhi) {
                continue; // no visible cell in the block (blo is INT_MAX)
            }
            const int64_t row = (a.group ? kvh0 + r : kvh0*g + r) + a.n_sel*(iq + a.n_q*is);
            int32_t   * gh = a.hist + row*nbins;
            const int * sh = hs + r*nbins;
            for (int b = blo + lane; b <= bhi; b += WARP_SIZE) {
                const int v = sh[b];
                if (v != 0) {
                    atomicAdd(&gh[b], v);
                }
            }
        }
    }
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
        // one candidate per thread: its rank is the number of smaller keys
        if ((int) threadIdx.x < n_out) {
            const unsigned long long key = keys[threadIdx.x];
            int rank = 0;
            for (int j = 0; j < n_out; ++j) {
                rank += keys[j] < key;
            }
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
    const size_t smem = adamas_select_dist_smem(D, a.n_gqa, a.group, a.nbins, a.hb);
    const dim3 grid((unsigned) (a.n_head_kv/a.hb), (unsigned) ((a.n_kv + a.chunk - 1)/a.chunk), (unsigned) (a.n_q*a.ns));
    if (vec) {
        adamas_select_dist_launch_v<D, true>(a, grid, smem, stream);
    } else {
        adamas_select_dist_launch_v<D, false>(a, grid, smem, stream);
    }
}

// The distance kernel's shape: a.hb, a.chunk (cells per block, a whole number of rounds) and a.pipe. The
// harness may change them before adamas_select_run (its sweep); the op takes them as they are.
static void adamas_select_plan(adamas_select_args & a, int D) {
    const size_t smem_max = a.smem_max > 0 ? std::min<size_t>(a.smem_max, ADAMAS_SELECT_MAX_SMEM) : ADAMAS_SELECT_MAX_SMEM;
    a.hb = adamas_select_hb(D, a.n_head_kv, a.n_gqa, a.group, a.nbins, smem_max);
    // From the harness's sweep on the H200 (docs/perf-notes.md, v5): enough rounds per block that the grid is
    // about two blocks per SM, but at most 4 (longer blocks lose more than the flushes they save), the loads
    // pipelined where the grid fits in one wave of two blocks per SM (the registers allow no more).
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
