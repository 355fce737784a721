#pragma once

// adamas_gguf: the Adamas ops over ggml's RPC backend (hooked into ggml-rpc.cpp by patch 0025).
//
// Upstream's RPC device says it supports every op, and its server runs whatever graph it gets. A server
// without our ops (upstream's rpc-server), or with other op numbers or parameters (another adamas_gguf), would
// abort on, or silently miscompute, an Adamas node. So:
//
//   - the server marks its HELLO response (the padding byte, which upstream leaves 0) with
//     GGML_RPC_ADAMAS_MARK: "I answer RPC_CMD_ADAMAS";
//   - a client asks such a server, on the same connection, for its wire version and op numbers (ADAMAS HELLO),
//     and, when they equal its own, whether the server's device supports each Adamas op (SUPPORTS_OP, so a
//     CUDA server answers with its kernels' limits); answers are cached per endpoint until the next handshake;
//   - an RPC device reports the Adamas ops unsupported otherwise: libllama then keeps those layers dense and
//     says why (ggml_backend_rpc_adamas_reason, found through the RPC registry's get_proc_address).
//
// Bump GGML_RPC_ADAMAS_WIRE_VERSION whenever an Adamas op's parameters (op_params), sources or semantics
// change, or the requests below do: client and server must then come from the same adamas_gguf.

#include "ggml.h"
#include "ggml-backend.h"

#include <cstddef>
#include <cstdint>
#include <vector>

#define GGML_RPC_ADAMAS_WIRE_VERSION 1

// the HELLO response's padding byte of a server that answers RPC_CMD_ADAMAS (upstream's servers send 0)
#define GGML_RPC_ADAMAS_MARK 0xAD
// the RPC command byte of our requests: far from upstream's commands (0..18), sent only to marked servers
#define GGML_RPC_ADAMAS_CMD 0xAD

// Test hook, read by a server: GGML_RPC_ADAMAS_TEST_WIRE=none acts as a server without Adamas (no mark, the
// command unknown), =N announces wire version N instead of its own.
#define GGML_RPC_ADAMAS_TEST_ENV "GGML_RPC_ADAMAS_TEST_WIRE"
// Test hook, read by a server: GGML_RPC_ADAMAS_TEST_REFUSE=OP (ggml's op name, e.g. ADAMAS_SELECT) answers that
// op unsupported, as a GPU whose kernels cannot take the shapes would.
#define GGML_RPC_ADAMAS_TEST_REFUSE_ENV "GGML_RPC_ADAMAS_TEST_REFUSE"

// client: one request and its fixed-size response over the endpoint's connection (ggml-rpc.cpp's dispatcher)
typedef bool (*ggml_rpc_adamas_exchange_t)(const char * endpoint, const void * input, size_t input_size,
                                           void * output, size_t output_size);

// true for GGML_OP_ADAMAS_*
bool ggml_rpc_adamas_is_op(const struct ggml_tensor * op);

// client: a connection to endpoint finished upstream's HELLO; mark is the response's padding byte
void ggml_rpc_adamas_client_hello(const char * endpoint, uint8_t mark);

// client: whether the server's device `device` runs this Adamas op; false (with a reason kept for dev) when the
// server lacks our ops, speaks another wire version, or its device refuses the op
bool ggml_rpc_adamas_supports_op(ggml_backend_dev_t dev, const char * endpoint, uint32_t device,
                                 const struct ggml_tensor * op, ggml_rpc_adamas_exchange_t exchange);

// client: why the last Adamas op was refused on dev (NULL: none was); exported as
// "ggml_backend_rpc_adamas_reason" by the RPC registry's get_proc_address
extern "C" const char * ggml_backend_rpc_adamas_reason(ggml_backend_dev_t dev);

// server: the padding byte for HELLO responses (GGML_RPC_ADAMAS_MARK, or 0 under the test hook's "none")
uint8_t ggml_rpc_adamas_server_mark(void);

// server: answers one RPC_CMD_ADAMAS request with the server's backends; false on a malformed request (the
// connection is then closed, as upstream does on a bad command)
bool ggml_rpc_adamas_serve(const ggml_backend_t * backends, size_t n_backends,
                           const uint8_t * input, size_t input_size, std::vector<uint8_t> & output);
