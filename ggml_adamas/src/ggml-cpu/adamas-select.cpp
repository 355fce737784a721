// GGML_OP_ADAMAS_SELECT on the CPU.
//
// A selection row is one (query head or KV group, query, stream). Rows are processed in blocks:
//   phase A: the threads share the (row, cell chunk) pieces of the block and write each visible cell's
//            L1 distance (two popcounts per 64-bit word, summed over the row's query heads) plus one
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

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

static constexpr uint16_t ADAMAS_NONE  = 0xFFFF; // a masked cell
static constexpr int64_t  ADAMAS_CHUNK = 2048;   // cells per phase-A piece
static constexpr int64_t  ADAMAS_BLOCK = 64;     // selection rows per block (bounds the work buffer)
static constexpr int64_t  ADAMAS_GMAX  = 16;     // query codes held in registers at once
static constexpr int64_t  ADAMAS_PF_CELLS = 64; // phase A prefetches the codes of the cells this far ahead
static constexpr int64_t  ADAMAS_NHIST = 4;      // phase B counts into this many histograms (runs of equal distances
                                                 // then do not wait on one counter), summed after

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
    s.nbins     = 3*(int64_t) s.D*s.g + 3; // distance + 1, 0 for forced cells, and one bin for masked cells
    return s;
}

size_t ggml_cpu_adamas_select_wsize(const ggml_tensor * dst, int n_tasks) {
    const adamas_select_shape s = adamas_select_get_shape(dst);
    const int64_t rows = std::min(s.nrows, ADAMAS_BLOCK);
    return rows*s.n_pos*sizeof(uint16_t) + n_tasks*(ADAMAS_NHIST*s.nbins*sizeof(int32_t) + 64);
}

static inline uint64_t adamas_load(const uint8_t * p, int nbytes) {
    uint64_t w = 0;
    memcpy(&w, p, nbytes);
    return w;
}

// Distances of positions [c0, c1) of one row: cells c0..c1-1, or with a list (cells) the cells it holds
// there. PB: bytes per plane (D/8), W: 64-bit words per plane.
// Words of one code of PB bytes per plane: the sign plane in s, the magnitude plane in m.
template <int PB>
static inline void adamas_load_code(const uint8_t * code, uint64_t (&s)[PB >= 8 ? PB/8 : 1], uint64_t (&m)[PB >= 8 ? PB/8 : 1]) {
    constexpr int W  = PB >= 8 ? PB/8 : 1;
    constexpr int WB = PB >= 8 ? 8 : PB;
    for (int w = 0; w < W; ++w) {
        s[w] = adamas_load(code + w*8,      WB);
        m[w] = adamas_load(code + PB + w*8, WB);
    }
}

// n query codes, qstride bytes apart, held as words for the distance loops
template <int PB>
static inline void adamas_load_qcodes(const uint8_t * qcode, size_t qstride, int64_t n,
                                      uint64_t (&qs)[ADAMAS_GMAX][PB >= 8 ? PB/8 : 1], uint64_t (&qm)[ADAMAS_GMAX][PB >= 8 ? PB/8 : 1]) {
    GGML_ASSERT(n <= ADAMAS_GMAX);
    for (int64_t j = 0; j < n; ++j) {
        adamas_load_code<PB>(qcode + j*qstride, qs[j], qm[j]);
    }
}

// exact L1 between two codes (ggml-adamas.h): per word popc(S ^ mq ^ mk) + 2*popc(S & (mq | mk))
template <int PB>
static inline uint32_t adamas_code_l1(const uint64_t (&qs)[PB >= 8 ? PB/8 : 1], const uint64_t (&qm)[PB >= 8 ? PB/8 : 1],
                                      const uint64_t (&ks)[PB >= 8 ? PB/8 : 1], const uint64_t (&km)[PB >= 8 ? PB/8 : 1]) {
    uint32_t d = 0;
    for (int w = 0; w < (PB >= 8 ? PB/8 : 1); ++w) {
        const uint64_t S = qs[w] ^ ks[w];
        d += __builtin_popcountll(S ^ qm[w] ^ km[w]) + 2*__builtin_popcountll(S & (qm[w] | km[w]));
    }
    return d;
}

template <int PB>
static void adamas_distances(
        const uint8_t * qcode, size_t qstride, int64_t g,     // g query codes, qstride bytes apart
        const uint8_t * kcode, size_t kstride,                // the KV head's code of cell 0, cell stride
        const void * mask, bool mask_f16,                     // mask row or NULL
        const int32_t * cells, int64_t n_kv,                  // the row's candidate list or NULL
        int64_t c0, int64_t c1, uint16_t * dist, bool accumulate) {
    constexpr int W  = PB >= 8 ? PB/8 : 1;

    uint64_t qs[ADAMAS_GMAX][W], qm[ADAMAS_GMAX][W];
    adamas_load_qcodes<PB>(qcode, qstride, g, qs, qm);

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
        adamas_load_code<PB>(k, ks, km);
        uint32_t d = 0;
        for (int64_t j = 0; j < g; ++j) {
            d += adamas_code_l1<PB>(qs[j], qm[j], ks, km);
        }
        dist[c] = (uint16_t) (accumulate ? dist[c] + d : d + 1);
    }
}

// HEAD mode: the distances of u query heads that read the same KV head (u consecutive selection rows, dist_stride
// apart in dist), in one pass over the key codes and the mask: each cell's code is loaded once for all u.
template <int PB>
static void adamas_distances_heads(
        const uint8_t * qcode, size_t qstride, int64_t u,     // u query codes, qstride bytes apart
        const uint8_t * kcode, size_t kstride,
        const void * mask, bool mask_f16,
        const int32_t * cells, int64_t n_kv,
        int64_t c0, int64_t c1, uint16_t * dist, int64_t dist_stride) {
    constexpr int W  = PB >= 8 ? PB/8 : 1;

    uint64_t qs[ADAMAS_GMAX][W], qm[ADAMAS_GMAX][W];
    adamas_load_qcodes<PB>(qcode, qstride, u, qs, qm);
    const uint32_t ninf = mask_f16 ? 0xFC00u : 0xFF800000u;
    const uint32_t pinf = mask_f16 ? 0x7C00u : 0x7F800000u;

    int64_t c = c0;
#if defined(__AVX512F__) && defined(__AVX512DQ__) && defined(__AVX512VPOPCNTDQ__) && defined(__AVX512BW__) && defined(__AVX512VL__)
    // 8 positions at a time: their codes gathered, two vector popcounts per word and query head, the same integers
    // as the scalar loop below
    if (PB >= 8) {
        __m512i vqs[ADAMAS_GMAX][W], vqm[ADAMAS_GMAX][W];
        for (int64_t j = 0; j < u; ++j) {
            for (int w = 0; w < W; ++w) {
                vqs[j][w] = _mm512_set1_epi64((long long) qs[j][w]);
                vqm[j][w] = _mm512_set1_epi64((long long) qm[j][w]);
            }
        }
        const __m512i lane   = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
        const __m512i one    = _mm512_set1_epi64(1);
        const __m512i vnone  = _mm512_set1_epi64(ADAMAS_NONE);
        const __m512i vzero  = _mm512_setzero_si512();
        const __m512i vkstr  = _mm512_set1_epi64((long long) kstride);
        for (; c + 8 <= c1; c += 8) {
            __m512i vcell;
            __mmask8 none = 0; // padding or masked
            if (cells) {
                vcell = _mm512_cvtepi32_epi64(_mm256_loadu_si256((const __m256i *) (cells + c)));
                none = _mm512_cmplt_epi64_mask(vcell, vzero);
                if (_mm512_mask_cmpge_epi64_mask((__mmask8) ~none, vcell, _mm512_set1_epi64(n_kv))) {
                    break; // a cell out of range: the scalar loop aborts on it
                }
                vcell = _mm512_mask_blend_epi64(none, vcell, vzero);
            } else {
                vcell = _mm512_add_epi64(_mm512_set1_epi64(c), lane);
                // the codes come from memory (every layer's are read once per step): ADAMAS_PF_CELLS ahead
                const uint8_t * pf = kcode + (c + ADAMAS_PF_CELLS)*kstride;
                for (size_t o = 0; o < 8*kstride; o += 64) {
                    _mm_prefetch((const char *) pf + o, _MM_HINT_T0);
                }
            }
            __mmask8 forced = 0;
            if (mask) {
                uint32_t mv[8];
                alignas(64) int64_t ci[8];
                _mm512_store_si512((__m512i *) ci, vcell);
                for (int i = 0; i < 8; ++i) {
                    mv[i] = mask_f16 ? ((const uint16_t *) mask)[ci[i]] : ((const uint32_t *) mask)[ci[i]];
                }
                const __m256i vm = _mm256_loadu_si256((const __m256i *) mv);
                none   |= _mm256_cmpeq_epi32_mask(vm, _mm256_set1_epi32((int) ninf));
                forced  = (__mmask8) (_mm256_cmpeq_epi32_mask(vm, _mm256_set1_epi32((int) pinf)) & ~none);
            }
            const __m512i voff = _mm512_mullo_epi64(vcell, vkstr);
            __m512i vks[W], vkm[W];
            for (int w = 0; w < W; ++w) {
                vks[w] = _mm512_i64gather_epi64(voff, (const void *) (kcode + w*8),      1);
                vkm[w] = _mm512_i64gather_epi64(voff, (const void *) (kcode + PB + w*8), 1);
            }
            for (int64_t j = 0; j < u; ++j) {
                __m512i d = one;
                for (int w = 0; w < W; ++w) {
                    // lo = S ^ mq ^ mk, hi = S & (mq | mk): one ternary-logic op each (truth tables 0x96, 0xE0)
                    const __m512i S  = _mm512_xor_si512(vqs[j][w], vks[w]);
                    const __m512i lo = _mm512_ternarylogic_epi64(S, vqm[j][w], vkm[w], 0x96);
                    const __m512i hi = _mm512_ternarylogic_epi64(S, vqm[j][w], vkm[w], 0xE0);
                    d = _mm512_add_epi64(d, _mm512_popcnt_epi64(lo));
                    d = _mm512_add_epi64(d, _mm512_slli_epi64(_mm512_popcnt_epi64(hi), 1));
                }
                d = _mm512_mask_blend_epi64(none, d, vnone);
                d = _mm512_mask_blend_epi64(forced, d, vzero);
                _mm_storeu_si128((__m128i *) (dist + j*dist_stride + c), _mm512_cvtepi64_epi16(d));
            }
        }
    }
#endif
    for (; c < c1; ++c) {
        int64_t cell = c;
        uint16_t fixed = 0; // ADAMAS_NONE or 0 (forced) for a cell that is not ranked by distance
        bool ranked = true;
        if (cells) {
            cell = cells[c];
            if (cell < 0) {
                fixed = ADAMAS_NONE; // padding
                ranked = false;
            } else if (cell >= n_kv) {
                GGML_ABORT("adamas_select: candidate cell %lld is out of [0, n_kv = %lld)", (long long) cell, (long long) n_kv);
            }
        }
        if (ranked && mask) {
            const uint32_t mv = mask_f16 ? ((const uint16_t *) mask)[cell] : ((const uint32_t *) mask)[cell];
            if (mv == ninf) {
                fixed = ADAMAS_NONE;
                ranked = false;
            } else if (mv == pinf) {
                fixed = 0;
                ranked = false;
            }
        }
        if (!ranked) {
            for (int64_t j = 0; j < u; ++j) {
                dist[j*dist_stride + c] = fixed;
            }
            continue;
        }
        const uint8_t * k = kcode + cell*kstride;
        uint64_t ks[W], km[W];
        adamas_load_code<PB>(k, ks, km);
        for (int64_t j = 0; j < u; ++j) {
            dist[j*dist_stride + c] = (uint16_t) (adamas_code_l1<PB>(qs[j], qm[j], ks, km) + 1);
        }
    }
}

// Ranking of one row from the distances of its n_pos positions (phase B); cells: its candidate list or NULL.
// hist: ADAMAS_NHIST*nbins counters.
static void adamas_emit(const uint16_t * dist, const int32_t * cells, int64_t n_pos, int64_t nbins, int budget,
                        int32_t * hist, int32_t * out) {
    std::fill(hist, hist + ADAMAS_NHIST*nbins, 0);
    if (cells) {
        // the scan below breaks ties by position, which is the cell order only if the list is increasing
        int64_t prev = -1;
        for (int64_t c = 0; c < n_pos; ++c) {
            if (cells[c] >= 0) {
                if (cells[c] <= prev) {
                    GGML_ABORT("adamas_select: candidate list not strictly increasing (cell %d after %lld)", cells[c], (long long) prev);
                }
                prev = cells[c];
            }
        }
    }
    // masked cells (ADAMAS_NONE) are counted in a bin past the others and left out
    {
        int32_t * h[ADAMAS_NHIST];
        for (int64_t i = 0; i < ADAMAS_NHIST; ++i) {
            h[i] = hist + i*nbins;
        }
        const uint16_t none = ADAMAS_NONE;
        const uint16_t last = (uint16_t) (nbins - 1); // ADAMAS_NONE lands here; distances stay below nbins - 1
        int64_t c = 0;
        for (; c + ADAMAS_NHIST <= n_pos; c += ADAMAS_NHIST) {
            for (int64_t i = 0; i < ADAMAS_NHIST; ++i) {
                const uint16_t d = dist[c + i];
                h[i][d == none ? last : d]++;
            }
        }
        for (; c < n_pos; ++c) {
            const uint16_t d = dist[c];
            h[0][d == none ? last : d]++;
        }
        for (int64_t b = 0; b < nbins; ++b) {
            int32_t n = 0;
            for (int64_t i = 0; i < ADAMAS_NHIST; ++i) {
                n += h[i][b];
            }
            hist[b] = n;
        }
    }
    const int64_t n_vis = n_pos - hist[nbins - 1];
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
    auto take = [&](int64_t c) {
        const int64_t d = dist[c];
        if (d < dstar) {
            out[hist[d]++] = cells ? cells[c] : (int32_t) c;
            placed++;
        } else if (d == dstar && ties < n_ties) {
            out[below + ties++] = cells ? cells[c] : (int32_t) c;
            placed++;
        }
    };
    int64_t c = n_pos - 1;
#if defined(__AVX512BW__)
    // 32 positions at a time from the top: only those at distance <= d* (a few per cent of them) are looked at
    if (n_out > 0) {
        const __m512i vstar = _mm512_set1_epi16((short) dstar);
        for (; c >= 31 && placed < n_out; c -= 32) {
            const __m512i v = _mm512_loadu_si512((const void *) (dist + c - 31));
            uint32_t hit = (uint32_t) _mm512_cmple_epu16_mask(v, vstar);
            while (hit && placed < n_out) {
                const int bit = 31 - __builtin_clz(hit);
                take(c - 31 + bit);
                hit &= ~(1u << bit);
            }
        }
    }
#endif
    for (; c >= 0 && placed < n_out; --c) {
        take(c);
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
                                       + ith*(ADAMAS_NHIST*s.nbins*sizeof(int32_t) + 64));

    const bool mask_f16 = mask && mask->type == GGML_TYPE_F16;
    const int64_t n_chunks = (s.n_pos + ADAMAS_CHUNK - 1)/ADAMAS_CHUNK;

    // selection row r -> (sel head, query, stream)
    auto row_coords = [&](int64_t r, int64_t & hs, int64_t & iq, int64_t & is) {
        hs = r % s.n_sel;
        iq = (r / s.n_sel) % s.n_q;
        is = r / (s.n_sel*s.n_q);
    };

    // phase A works on units of rows: in HEAD mode the n_gqa rows of one KV head (their codes are read once), else
    // one row. A block holds whole units (n_sel is a multiple of n_gqa, so a unit never straddles two queries).
    const int64_t unit  = !s.group && s.n_gqa > 1 && s.n_gqa <= ADAMAS_GMAX ? s.n_gqa : 1;
    const int64_t block = std::max<int64_t>(1, ADAMAS_BLOCK/unit)*unit;
    GGML_ASSERT(block <= ADAMAS_BLOCK || unit == 1);

    for (int64_t r0 = 0; r0 < s.nrows; r0 += block) {
        const int64_t nr = std::min(block, s.nrows - r0);
        const int64_t nu = nr/unit;

        // phase A: distances
        for (int64_t piece = ith; piece < nu*n_chunks; piece += nth) {
            const int64_t r  = r0 + (piece / n_chunks)*unit;
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

            if (unit > 1) {
                switch (s.D) {
                    case 32:  adamas_distances_heads<4> (q, qc->nb[1], unit, k, kc->nb[2], m, mask_f16, cl, s.n_kv, c0, c1, dist, s.n_pos); break;
                    case 64:  adamas_distances_heads<8> (q, qc->nb[1], unit, k, kc->nb[2], m, mask_f16, cl, s.n_kv, c0, c1, dist, s.n_pos); break;
                    case 128: adamas_distances_heads<16>(q, qc->nb[1], unit, k, kc->nb[2], m, mask_f16, cl, s.n_kv, c0, c1, dist, s.n_pos); break;
                    case 256: adamas_distances_heads<32>(q, qc->nb[1], unit, k, kc->nb[2], m, mask_f16, cl, s.n_kv, c0, c1, dist, s.n_pos); break;
                    default:  GGML_ABORT("adamas_select: unsupported head dim %d", s.D);
                }
                continue;
            }

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
        if (r0 + block < s.nrows) {
            ggml_barrier(params->threadpool); // the next block reuses the distance buffer
        }
    }
}
