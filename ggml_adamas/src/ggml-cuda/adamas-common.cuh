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
#include <utility>

// Programmatic dependent launch (Hopper and newer), as upstream's kernels use it: each kernel lets the next one be
// scheduled as soon as it starts (adamas_pdl_lc) and waits for the previous one to complete before it touches
// global memory (adamas_pdl_sync: the inputs, and pool memory the previous kernel may still be using), so the
// launch latency of a graph node (about 1 us) hides behind the node before it. GGML_CUDA_PDL=0 turns it off for
// ours as for upstream's kernels.
#ifndef ADAMAS_CUDA_STANDALONE
static __device__ __forceinline__ void adamas_pdl_sync() { ggml_cuda_pdl_sync(); }
static __device__ __forceinline__ void adamas_pdl_lc()   { ggml_cuda_pdl_lc(); }

template <typename Kernel, typename... Args>
static void adamas_launch(Kernel kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t stream, Args &&... args) {
    ggml_cuda_kernel_launch(kernel, ggml_cuda_kernel_launch_params(grid, block, smem, stream), std::forward<Args>(args)...);
}
#else
static __device__ __forceinline__ void adamas_pdl_sync() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    cudaGridDependencySynchronize();
#endif
}
static __device__ __forceinline__ void adamas_pdl_lc() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    cudaTriggerProgrammaticLaunchCompletion();
#endif
}

template <typename Kernel, typename... Args>
static void adamas_launch(Kernel kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t stream, Args &&... args) {
    static const bool pdl = [] { const char * e = getenv("GGML_CUDA_PDL"); return e == nullptr || atoi(e) != 0; }();
    if (pdl) {
        cudaLaunchAttribute attr = {};
        attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr.val.programmaticStreamSerializationAllowed = 1;
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = grid; cfg.blockDim = block; cfg.dynamicSmemBytes = smem; cfg.stream = stream;
        cfg.attrs = &attr; cfg.numAttrs = 1;
        cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
    } else {
        kernel<<<grid, block, smem, stream>>>(std::forward<Args>(args)...);
    }
}
#endif


// the I8 code layout of ggml-adamas.h: a sign plane then a magnitude plane, D/8 bytes each
#define ADAMAS_CUDA_CODE_SIZE(d) ((d)/4)

// mask values the select kernel tells apart (bit patterns, as the CPU kernel does)
#define ADAMAS_F16_NINF 0xFC00u
#define ADAMAS_F16_PINF 0x7C00u
#define ADAMAS_F32_NINF 0xFF800000u
#define ADAMAS_F32_PINF 0x7F800000u

// distance buffer value of a masked cell (the CPU kernel's ADAMAS_NONE)
#define ADAMAS_DIST_NONE 0xFFFFu

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
