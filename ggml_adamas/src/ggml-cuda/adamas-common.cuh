#pragma once
// Shared by the Adamas CUDA kernels (adamas-{encode,select,attn}.cu). Inside ggml-cuda it rests on
// common.cuh; the standalone harness (ggml_adamas/tests/cuda) defines ADAMAS_CUDA_STANDALONE and gets the
// few definitions the kernels need without the rest of ggml.

#ifndef ADAMAS_CUDA_STANDALONE
#include "common.cuh"
#else
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#ifndef WARP_SIZE
#define WARP_SIZE 32
#endif
#endif

#include <climits>
#include <cstdint>

// the I8 code layout of ggml-adamas.h: a sign plane then a magnitude plane, D/8 bytes each
#define ADAMAS_CUDA_CODE_SIZE(d) ((d)/4)

// mask values the select kernel tells apart (bit patterns, as the CPU kernel does)
#define ADAMAS_F16_NINF 0xFC00u
#define ADAMAS_F16_PINF 0x7C00u
#define ADAMAS_F32_NINF 0xFF800000u
#define ADAMAS_F32_PINF 0x7F800000u

// distance buffer value of a masked cell (the CPU kernel's ADAMAS_NONE)
#define ADAMAS_DIST_NONE 0xFFFFu

// an environment switch (GGML_CUDA_ADAMAS_*, the harness's ADAMAS_*): def when unset, else whether its integer value
// is not 0; callers read it once (a static), as upstream's GGML_CUDA_* switches are read
static inline bool adamas_env_switch(const char * name, bool def) {
    const char * e = getenv(name);
    return e ? atoi(e) != 0 : def;
}

// GGML_CUDA_ADAMAS_PAR_RANK: the emit's and the cluster rerank's counting ranks with several threads a key and 8
// shared loads in flight (v13, docs/perf-notes.md); 0: one thread a key walking the keys one load at a time, as
// before. Off by default until it has run on a GPU. Read once.
static inline bool adamas_par_rank_env() {
    static const bool on = adamas_env_switch("GGML_CUDA_ADAMAS_PAR_RANK", false);
    return on;
}

// dynamic shared memory above the 48 KiB default must be opted into per kernel; capture-safe (not a stream
// operation) and idempotent
template <typename K>
static void adamas_set_smem(K kernel, size_t smem) {
    if (smem > 48*1024) {
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int) smem);
    }
}

static __device__ __forceinline__ uint32_t adamas_mask_bits(const void * row, bool f16, int64_t c) {
    return f16 ? (uint32_t) ((const uint16_t *) row)[c] : ((const uint32_t *) row)[c];
}

// Thread-block clusters (sm_90+, CUDA 12): the rerank's one-launch form (adamas-attn.cu). A kernel using them
// compiles its body only for __CUDA_ARCH__ >= 900; adamas_cluster_compiled says whether the code the device runs
// was generated for such an architecture (a build for older ones JIT-compiled on Hopper holds the empty body).
#if !defined(GGML_USE_HIP) && !defined(GGML_USE_MUSA) && defined(__CUDACC__) && CUDART_VERSION >= 12000
#define ADAMAS_CLUSTERS
#include <cooperative_groups.h>

template <typename K>
static bool adamas_cluster_compiled(K kernel) {
    cudaFuncAttributes fa;
    return cudaFuncGetAttributes(&fa, kernel) == cudaSuccess && fa.ptxVersion >= 90;
}

// launches kernel on grid (x a multiple of cl) in clusters of cl blocks along x
template <typename K, typename... Args>
static void adamas_launch_cluster(K kernel, dim3 grid, dim3 block, unsigned cl, cudaStream_t stream, Args... args) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim  = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = 0;
    cfg.stream = stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = cl;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    cudaLaunchKernelEx(&cfg, kernel, args...);
}
#endif
