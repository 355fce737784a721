#pragma once
#include "common.cuh"

// GGML_OP_ADAMAS_ATTN
void ggml_cuda_op_adamas_attn(ggml_backend_cuda_context & ctx, ggml_tensor * dst);
bool ggml_cuda_adamas_attn_supported(int device, const ggml_tensor * op);
