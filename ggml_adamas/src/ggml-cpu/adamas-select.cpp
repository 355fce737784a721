// GGML_OP_ADAMAS_SELECT on the CPU.
//
// A selection row is one (query head or KV group, query, stream). Rows are processed in blocks:
//   phase A: the threads share the (row, cell chunk) pieces of the block and write each visible cell's
//            L1 distance (three popcounts per 64-bit word, summed over the row's query heads) plus one
//            as uint16; masked cells (-INF) get ADAMAS_NONE and forced cells (+INF) 0;
//   phase B: each row (one thread) histograms its distances (integers in [0, 3*D*g]), finds the
//            threshold distance d* at which the count reaches the budget, and emits the cells in
//            ranking order with one scan from the highest cell down: cells below d* go to their
//            histogram offsets, and the first (highest) cells at d* fill the remaining slots.
// O(n_kv) per row, no sort; the result is the exact ranking (distance asc, cell index desc).
// With a candidate list (src[3], ggml_adamas_select_cells) a row's positions are its list's entries instead of
// 0..n_kv-1: distances, histogram and scan go over list positions (the list is increasing, so the highest
// position is the highest cell) and the emit writes the listed cell.

#include "adamas-select.h"

#include "ggml-adamas.h"
#include "ggml-cpu-impl.h"
#include "ggml-impl.h"

#include <algorithm>
#include <cstdint>
#include <cstring>

static constexpr uint16_t ADAMAS_NONE  = 0xFFFF; // a masked cell
static constexpr int64_t  ADAMAS_CHUNK = 2048;   // cells per phase-A piece
static constexpr int64_t  ADAMAS_BLOCK = 64;     // selection rows per block (bounds the work buffer)
static constexpr int64_t  ADAMAS_GMAX  = 16;     // query codes held in registers at once

struct adamas_select_shape {
    int     D;
    int     budget;
    bool    group;
    int64_t n_head, n_head_kv, n_gqa, n_q, ns, n_kv;
    int64_t n_pos;  // ranked positions per row: n_kv, or the candidate list's length
    int64_t n_sel;  // selection rows per (query, stream)
    int64_t g;      // query heads per selection row
    int64_t nrows;  // all selection rows
    int64_t nbins;  // distance histogram size
};

static adamas_select_shape adamas_select_get_shape(const ggml_tensor * dst) {
    const ggml_tensor * qc = dst->src[0];
    const ggml_tensor * kc = dst->src[1];
    adamas_select_shape s;
    s.D         = (int) (4*qc->ne[0]);
    s.budget    = ggml_get_op_params_i32(dst, 0);
    s.group     = ggml_get_op_params_i32(dst, 1) == GGML_ADAMAS_SELECT_GROUP;
    s.n_head    = qc->ne[1];
    s.n_head_kv = kc->ne[1];
    s.n_gqa     = s.n_head/s.n_head_kv;
    s.n_q       = qc->ne[2];
    s.ns        = qc->ne[3];
    s.n_kv      = kc->ne[2];
    s.n_pos     = dst->src[3] ? dst->src[3]->ne[0] : s.n_kv;
    s.n_sel     = s.group ? s.n_head_kv : s.n_head;
    s.g         = s.group ? s.n_gqa : 1;
    s.nrows     = s.n_sel*s.n_q*s.ns;
    s.nbins     = 3*(int64_t) s.D*s.g + 2; // distance + 1, and 0 for forced cells
    return s;
}

size_t ggml_cpu_adamas_select_wsize(const ggml_tensor * dst, int n_tasks) {
    const adamas_select_shape s = adamas_select_get_shape(dst);
    const int64_t rows = std::min(s.nrows, ADAMAS_BLOCK);
    return rows*s.n_pos*sizeof(uint16_t) + n_tasks*(s.nbins*sizeof(int32_t) + 64);
}

static inline uint64_t adamas_load(const uint8_t * p, int nbytes) {
    uint64_t w = 0;
    memcpy(&w, p, nbytes);
    return w;
}

// Distances of positions [c0, c1) of one row: cells c0..c1-1, or with a list (cells) the cells it holds
// there. PB: bytes per plane (D/8), W: 64-bit words per plane.
template <int PB>
static void adamas_distances(
        const uint8_t * qcode, size_t qstride, int64_t g,     // g query codes, qstride bytes apart
        const uint8_t * kcode, size_t kstride,                // the KV head's code of cell 0, cell stride
        const void * mask, bool mask_f16,                     // mask row or NULL
        const int32_t * cells, int64_t n_kv,                  // the row's candidate list or NULL
        int64_t c0, int64_t c1, uint16_t * dist, bool accumulate) {
    constexpr int W  = PB >= 8 ? PB/8 : 1;
    constexpr int WB = PB >= 8 ? 8 : PB;

    uint64_t qs[ADAMAS_GMAX][W], qm[ADAMAS_GMAX][W];
    GGML_ASSERT(g <= ADAMAS_GMAX);
    for (int64_t j = 0; j < g; ++j) {
        for (int w = 0; w < W; ++w) {
            qs[j][w] = adamas_load(qcode + j*qstride + w*8,      WB);
            qm[j][w] = adamas_load(qcode + j*qstride + PB + w*8, WB);
        }
    }

    for (int64_t c = c0; c < c1; ++c) {
        int64_t cell = c;
        if (cells) {
            cell = cells[c];
            if (cell < 0) {
                dist[c] = ADAMAS_NONE; // padding
                continue;
            }
            if (cell >= n_kv) {
                GGML_ABORT("adamas_select: candidate cell %lld is out of [0, n_kv = %lld)", (long long) cell, (long long) n_kv);
            }
        }
        if (accumulate) {
            if (dist[c] == ADAMAS_NONE || dist[c] == 0) {
                continue;
            }
        } else if (mask) {
            // F16 -INF 0xFC00, +INF 0x7C00; F32 -INF 0xFF800000, +INF 0x7F800000
            const uint32_t mv = mask_f16 ? ((const uint16_t *) mask)[cell] : ((const uint32_t *) mask)[cell];
            const uint32_t ninf = mask_f16 ? 0xFC00u : 0xFF800000u;
            const uint32_t pinf = mask_f16 ? 0x7C00u : 0x7F800000u;
            if (mv == ninf) {
                dist[c] = ADAMAS_NONE;
                continue;
            }
            if (mv == pinf) {
                dist[c] = 0;
                continue;
            }
        }
        const uint8_t * k = kcode + cell*kstride;
        uint64_t ks[W], km[W];
        for (int w = 0; w < W; ++w) {
            ks[w] = adamas_load(k + w*8,      WB);
            km[w] = adamas_load(k + PB + w*8, WB);
        }
        uint32_t d = 0;
        for (int64_t j = 0; j < g; ++j) {
            for (int w = 0; w < W; ++w) {
                const uint64_t S = qs[j][w] ^ ks[w];
                d += __builtin_popcountll(S) + __builtin_popcountll(qm[j][w] ^ km[w])
                   + 2*__builtin_popcountll(S & qm[j][w] & km[w]);
            }
        }
        dist[c] = (uint16_t) (accumulate ? dist[c] + d : d + 1);
    }
}

// Ranking of one row from the distances of its n_pos positions (phase B); cells: its candidate list or NULL.
static void adamas_emit(const uint16_t * dist, const int32_t * cells, int64_t n_pos, int64_t nbins, int budget,
                        int32_t * hist, int32_t * out) {
    std::fill(hist, hist + nbins, 0);
    int64_t n_vis = 0;
    int64_t prev  = -1;
    for (int64_t c = 0; c < n_pos; ++c) {
        if (cells && cells[c] >= 0) {
            // the scan below breaks ties by position, which is the cell order only if the list is increasing
            if (cells[c] <= prev) {
                GGML_ABORT("adamas_select: candidate list not strictly increasing (cell %d after %lld)", cells[c], (long long) prev);
            }
            prev = cells[c];
        }
        if (dist[c] != ADAMAS_NONE) {
            hist[dist[c]]++;
            n_vis++;
        }
    }
    const int64_t n_out = std::min<int64_t>(budget, n_vis);

    // threshold d*: the count of cells with distance <= d* reaches n_out
    int64_t dstar = 0;
    int64_t below = 0; // cells with distance < d*
    if (n_out > 0) {
        while (below + hist[dstar] < n_out) {
            below += hist[dstar++];
        }
    }
    const int64_t n_ties = n_out - below; // cells at d* that are taken (the highest ones)

    // hist becomes the output offset of each distance below d*
    int32_t off = 0;
    for (int64_t d = 0; d < dstar; ++d) {
        const int32_t n = hist[d];
        hist[d] = off;
        off += n;
    }

    int64_t placed = 0;
    int64_t ties   = 0;
    for (int64_t c = n_pos - 1; c >= 0 && placed < n_out; --c) {
        const int64_t d = dist[c];
        if (d < dstar) {
            out[hist[d]++] = cells ? cells[c] : (int32_t) c;
            placed++;
        } else if (d == dstar && ties < n_ties) {
            out[below + ties++] = cells ? cells[c] : (int32_t) c;
            placed++;
        }
    }
    for (int64_t j = n_out; j < budget; ++j) {
        out[j] = -1;
    }
}

void ggml_compute_forward_adamas_select(const ggml_compute_params * params, ggml_tensor * dst) {
    const ggml_tensor * qc   = dst->src[0];
    const ggml_tensor * kc   = dst->src[1];
    const ggml_tensor * mask = dst->src[2];
    const ggml_tensor * list = dst->src[3];

    const adamas_select_shape s = adamas_select_get_shape(dst);
    GGML_ASSERT(s.nbins < ADAMAS_NONE);
    GGML_ASSERT(params->wsize >= ggml_cpu_adamas_select_wsize(dst, params->nth));

    const int ith = params->ith;
    const int nth = params->nth;

    uint16_t * dist_all = (uint16_t *) params->wdata;
    int32_t  * hist     = (int32_t *) ((char *) params->wdata + std::min(s.nrows, ADAMAS_BLOCK)*s.n_pos*sizeof(uint16_t)
                                       + ith*(s.nbins*sizeof(int32_t) + 64));

    const bool mask_f16 = mask && mask->type == GGML_TYPE_F16;
    const int64_t n_chunks = (s.n_pos + ADAMAS_CHUNK - 1)/ADAMAS_CHUNK;

    // selection row r -> (sel head, query, stream)
    auto row_coords = [&](int64_t r, int64_t & hs, int64_t & iq, int64_t & is) {
        hs = r % s.n_sel;
        iq = (r / s.n_sel) % s.n_q;
        is = r / (s.n_sel*s.n_q);
    };

    for (int64_t r0 = 0; r0 < s.nrows; r0 += ADAMAS_BLOCK) {
        const int64_t nr = std::min(ADAMAS_BLOCK, s.nrows - r0);

        // phase A: distances
        for (int64_t piece = ith; piece < nr*n_chunks; piece += nth) {
            const int64_t r  = r0 + piece / n_chunks;
            const int64_t c0 = (piece % n_chunks)*ADAMAS_CHUNK;
            const int64_t c1 = std::min(c0 + ADAMAS_CHUNK, s.n_pos);
            int64_t hs, iq, is;
            row_coords(r, hs, iq, is);

            const int64_t h0  = s.group ? hs*s.n_gqa : hs;  // first query head of the row
            const int64_t kvh = s.group ? hs : hs/s.n_gqa;

            const uint8_t * q = (const uint8_t *) qc->data + h0*qc->nb[1] + iq*qc->nb[2] + is*qc->nb[3];
            const uint8_t * k = (const uint8_t *) kc->data + kvh*kc->nb[1] + is*kc->nb[3];
            const void * m = mask ? (const char *) mask->data + iq*mask->nb[1] + (is % mask->ne[3])*mask->nb[3] : nullptr;
            const int32_t * cl = list ? (const int32_t *) ((const char *) list->data + iq*list->nb[1] + is*list->nb[2]) : nullptr;
            uint16_t * dist = dist_all + (r - r0)*s.n_pos;

            // groups wider than ADAMAS_GMAX (e.g. MQA) are summed in several passes
            for (int64_t j0 = 0; j0 < s.g; j0 += ADAMAS_GMAX) {
                const uint8_t * qj = q + j0*qc->nb[1];
                const int64_t   gj = std::min(ADAMAS_GMAX, s.g - j0);
                const bool      acc = j0 > 0;
                switch (s.D) {
                    case 32:  adamas_distances<4> (qj, qc->nb[1], gj, k, kc->nb[2], m, mask_f16, cl, s.n_kv, c0, c1, dist, acc); break;
                    case 64:  adamas_distances<8> (qj, qc->nb[1], gj, k, kc->nb[2], m, mask_f16, cl, s.n_kv, c0, c1, dist, acc); break;
                    case 128: adamas_distances<16>(qj, qc->nb[1], gj, k, kc->nb[2], m, mask_f16, cl, s.n_kv, c0, c1, dist, acc); break;
                    case 256: adamas_distances<32>(qj, qc->nb[1], gj, k, kc->nb[2], m, mask_f16, cl, s.n_kv, c0, c1, dist, acc); break;
                    default:  GGML_ABORT("adamas_select: unsupported head dim %d", s.D);
                }
            }
        }
        ggml_barrier(params->threadpool);

        // phase B: ranking, one row per thread at a time
        for (int64_t r = r0 + ith; r < r0 + nr; r += nth) {
            int64_t hs, iq, is;
            row_coords(r, hs, iq, is);
            int32_t * out = (int32_t *) ((char *) dst->data + hs*dst->nb[1] + iq*dst->nb[2] + is*dst->nb[3]);
            const int32_t * cl = list ? (const int32_t *) ((const char *) list->data + iq*list->nb[1] + is*list->nb[2]) : nullptr;
            adamas_emit(dist_all + (r - r0)*s.n_pos, cl, s.n_pos, s.nbins, s.budget, hist, out);
        }
        if (r0 + ADAMAS_BLOCK < s.nrows) {
            ggml_barrier(params->threadpool); // the next block reuses the distance buffer
        }
    }
}
