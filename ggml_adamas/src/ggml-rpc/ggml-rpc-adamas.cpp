// adamas_gguf: the Adamas ops over ggml's RPC backend, client and server side (see ggml-rpc-adamas.h).

#include "ggml-rpc-adamas.h"

#include "ggml-cpp.h"
#include "ggml-impl.h"

#include <cinttypes>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>

// ---- wire format ------------------------------------------------------------------------------------------

enum adamas_req : uint8_t {
    ADAMAS_REQ_HELLO       = 0,
    ADAMAS_REQ_SUPPORTS_OP = 1,
};

static const uint32_t ADAMAS_HELLO_MAGIC = 0x534d4441; // "ADMS"

#pragma pack(push, 1)
// HELLO's request and response never change (every version must read every other's), unlike the rest
struct adamas_hello_req {
    uint8_t  req;          // ADAMAS_REQ_HELLO
    uint32_t wire_version; // the client's
};

struct adamas_hello_rsp {
    uint32_t magic;        // ADAMAS_HELLO_MAGIC
    uint32_t wire_version; // the server's
    uint32_t op_first;     // its GGML_OP_ADAMAS_ENCODE (SELECT, ATTN follow)
    uint32_t op_count;     // its GGML_OP_COUNT
    uint32_t n_devices;
    uint32_t reserved[3];
};

// what a backend's supports_op looks at: the op and its direct sources, without data
struct adamas_tensor {
    int32_t  type; // -1: no tensor
    int32_t  op;
    int64_t  ne[GGML_MAX_DIMS];
    uint64_t nb[GGML_MAX_DIMS];
    int32_t  op_params[GGML_MAX_OP_PARAMS/sizeof(int32_t)];
    int32_t  flags;
};

struct adamas_supports_op_req {
    uint8_t       req; // ADAMAS_REQ_SUPPORTS_OP
    uint32_t      device;
    adamas_tensor op;
    adamas_tensor src[GGML_MAX_SRC];
};

struct adamas_supports_op_rsp {
    uint8_t supported;
    char    device[63]; // the server's device name, for the client's message
};
#pragma pack(pop)

static_assert(sizeof(adamas_hello_rsp) == 32, "the Adamas HELLO response is frozen");

bool ggml_rpc_adamas_is_op(const ggml_tensor * op) {
    return op->op == GGML_OP_ADAMAS_ENCODE || op->op == GGML_OP_ADAMAS_SELECT || op->op == GGML_OP_ADAMAS_ATTN;
}

static void adamas_serialize(adamas_tensor & out, const ggml_tensor * t) {
    memset(&out, 0, sizeof(out));
    if (!t) {
        out.type = -1;
        return;
    }
    out.type = t->type;
    out.op   = t->op;
    for (int i = 0; i < GGML_MAX_DIMS; i++) {
        out.ne[i] = t->ne[i];
        out.nb[i] = t->nb[i];
    }
    memcpy(out.op_params, t->op_params, sizeof(out.op_params));
    out.flags = t->flags;
}

// ---- client -----------------------------------------------------------------------------------------------

namespace {

struct adamas_endpoint {
    uint8_t     mark  = 0;     // HELLO's padding byte at the last handshake
    bool        asked = false; // the ADAMAS HELLO was exchanged since
    std::string refusal;       // empty: versions match, ask per op
    std::map<std::string, std::pair<bool, std::string>> ops; // request bytes -> (supported, server device)
};

std::mutex                                    g_mutex;
std::map<std::string, adamas_endpoint>        g_endpoints;
std::map<ggml_backend_dev_t, std::string>     g_reasons;

} // namespace

void ggml_rpc_adamas_client_hello(const char * endpoint, uint8_t mark) {
    std::lock_guard<std::mutex> lock(g_mutex);
    // every new connection may reach another server process at this address: forget what the last one said
    adamas_endpoint & ep = g_endpoints[endpoint];
    ep = adamas_endpoint();
    ep.mark = mark;
}

static void adamas_set_reason(ggml_backend_dev_t dev, const std::string & why) {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_reasons[dev] = why;
}

// Asks a marked server for its wire version and op numbers; the refusal reason, empty when they match ours.
static std::string adamas_hello(const char * endpoint, ggml_rpc_adamas_exchange_t exchange) {
    adamas_hello_req req = {};
    req.req          = ADAMAS_REQ_HELLO;
    req.wire_version = GGML_RPC_ADAMAS_WIRE_VERSION;
    adamas_hello_rsp rsp = {};
    exchange(endpoint, &req, sizeof(req), &rsp, sizeof(rsp));
    const std::string server = std::string("the rpc-server at ") + endpoint;
    if (rsp.magic != ADAMAS_HELLO_MAGIC) {
        return server + " gave a malformed Adamas handshake";
    }
    if (rsp.wire_version != GGML_RPC_ADAMAS_WIRE_VERSION) {
        return server + " speaks Adamas wire version " + std::to_string(rsp.wire_version) + ", this client " +
               std::to_string(GGML_RPC_ADAMAS_WIRE_VERSION) + ": run client and server from the same adamas_gguf";
    }
    if (rsp.op_first != GGML_OP_ADAMAS_ENCODE || rsp.op_count != GGML_OP_COUNT) {
        return server + " numbers the Adamas ops differently (op " + std::to_string(rsp.op_first) + " of " +
               std::to_string(rsp.op_count) + ", here " + std::to_string(GGML_OP_ADAMAS_ENCODE) + " of " +
               std::to_string(GGML_OP_COUNT) + "): it was built from another upstream llama.cpp";
    }
    return std::string();
}

bool ggml_rpc_adamas_supports_op(ggml_backend_dev_t dev, const char * endpoint, uint32_t device,
                                 const ggml_tensor * op, ggml_rpc_adamas_exchange_t exchange) {
    adamas_supports_op_req req;
    memset(&req, 0, sizeof(req));
    req.req    = ADAMAS_REQ_SUPPORTS_OP;
    req.device = device;
    adamas_serialize(req.op, op);
    for (int i = 0; i < GGML_MAX_SRC; i++) {
        adamas_serialize(req.src[i], op->src[i]);
    }
    const std::string key((const char *) &req, sizeof(req));

    // the lock is never held across an exchange: that may open a connection, whose handshake comes back here
    bool need_hello = false;
    {
        std::lock_guard<std::mutex> lock(g_mutex);
        auto it = g_endpoints.find(endpoint);
        if (it == g_endpoints.end()) {
            g_reasons[dev] = std::string("no handshake with the rpc-server at ") + endpoint + " was seen";
            return false;
        }
        adamas_endpoint & ep = it->second;
        if (ep.mark != GGML_RPC_ADAMAS_MARK) {
            g_reasons[dev] = std::string("the rpc-server at ") + endpoint + " has no Adamas kernels (upstream's "
                             "rpc-server, or one not built by adamas_gguf with ADAMAS_BUILD_RPC)";
            return false;
        }
        need_hello = !ep.asked;
    }
    if (need_hello) {
        const std::string refusal = adamas_hello(endpoint, exchange);
        std::lock_guard<std::mutex> lock(g_mutex);
        adamas_endpoint & ep = g_endpoints[endpoint];
        ep.asked   = true;
        ep.refusal = refusal;
    }
    {
        std::lock_guard<std::mutex> lock(g_mutex);
        adamas_endpoint & ep = g_endpoints[endpoint];
        if (!ep.refusal.empty()) {
            g_reasons[dev] = ep.refusal;
            return false;
        }
        auto it = ep.ops.find(key);
        if (it != ep.ops.end()) {
            if (!it->second.first) {
                g_reasons[dev] = "the server's " + it->second.second + " cannot run " + ggml_op_desc(op) +
                                 " for these shapes and types";
            }
            return it->second.first;
        }
    }
    adamas_supports_op_rsp rsp = {};
    exchange(endpoint, &req, sizeof(req), &rsp, sizeof(rsp));
    rsp.device[sizeof(rsp.device) - 1] = '\0';
    const bool ok = rsp.supported != 0;
    std::lock_guard<std::mutex> lock(g_mutex);
    g_endpoints[endpoint].ops[key] = { ok, rsp.device };
    if (!ok) {
        g_reasons[dev] = std::string("the server's ") + rsp.device + " cannot run " + ggml_op_desc(op) +
                         " for these shapes and types";
    }
    return ok;
}

const char * ggml_backend_rpc_adamas_reason(ggml_backend_dev_t dev) {
    std::lock_guard<std::mutex> lock(g_mutex);
    auto it = g_reasons.find(dev);
    // the map's strings stay where they are until the next refusal on this device
    return it == g_reasons.end() ? nullptr : it->second.c_str();
}

// ---- server -----------------------------------------------------------------------------------------------

// The test hook: -1 none (act as upstream), 0 off (our own version), else the version to announce.
static int64_t adamas_test_wire(void) {
    static const int64_t v = [] {
        const char * s = std::getenv(GGML_RPC_ADAMAS_TEST_ENV);
        if (!s || !*s) {
            return (int64_t) 0;
        }
        if (strcmp(s, "none") == 0) {
            return (int64_t) -1;
        }
        char * end = nullptr;
        const long long n = strtoll(s, &end, 10);
        if (*end != '\0' || n <= 0 || n > UINT32_MAX) {
            GGML_ABORT("%s=%s: must be none or a wire version from 1 to %u", GGML_RPC_ADAMAS_TEST_ENV, s, UINT32_MAX);
        }
        GGML_LOG_WARN("%s=%s: this server announces Adamas wire version %lld (a test hook)\n",
                      GGML_RPC_ADAMAS_TEST_ENV, s, n);
        return (int64_t) n;
    }();
    return v;
}

uint8_t ggml_rpc_adamas_server_mark(void) {
    return adamas_test_wire() < 0 ? 0 : GGML_RPC_ADAMAS_MARK;
}

// A tensor of the request's description, without data; nullptr if it is not one ggml could make.
static ggml_tensor * adamas_deserialize(ggml_context * ctx, const adamas_tensor & t) {
    if (t.type < 0 || t.type >= GGML_TYPE_COUNT || ggml_blck_size((ggml_type) t.type) == 0 || t.op < 0 ||
        t.op >= GGML_OP_COUNT) {
        return nullptr;
    }
    for (int i = 0; i < GGML_MAX_DIMS; i++) {
        if (t.ne[i] < 0 || t.ne[i] > ((int64_t) 1 << 40)) {
            return nullptr;
        }
    }
    if (t.ne[0] % ggml_blck_size((ggml_type) t.type) != 0) {
        return nullptr;
    }
    ggml_tensor * r = ggml_new_tensor_4d(ctx, (ggml_type) t.type, t.ne[0], t.ne[1], t.ne[2], t.ne[3]);
    for (int i = 0; i < GGML_MAX_DIMS; i++) {
        r->nb[i] = t.nb[i];
    }
    r->op = (ggml_op) t.op;
    memcpy(r->op_params, t.op_params, sizeof(t.op_params));
    r->flags = t.flags;
    return r;
}

bool ggml_rpc_adamas_serve(const ggml_backend_t * backends, size_t n_backends,
                           const uint8_t * input, size_t input_size, std::vector<uint8_t> & output) {
    if (input_size < 1) {
        return false;
    }
    switch (input[0]) {
        case ADAMAS_REQ_HELLO: {
            if (input_size != sizeof(adamas_hello_req)) {
                return false;
            }
            adamas_hello_rsp rsp = {};
            rsp.magic        = ADAMAS_HELLO_MAGIC;
            rsp.wire_version = adamas_test_wire() > 0 ? (uint32_t) adamas_test_wire() : GGML_RPC_ADAMAS_WIRE_VERSION;
            rsp.op_first     = GGML_OP_ADAMAS_ENCODE;
            rsp.op_count     = GGML_OP_COUNT;
            rsp.n_devices    = (uint32_t) n_backends;
            output.assign((const uint8_t *) &rsp, (const uint8_t *) &rsp + sizeof(rsp));
            return true;
        }
        case ADAMAS_REQ_SUPPORTS_OP: {
            adamas_supports_op_req req;
            if (input_size != sizeof(req)) {
                return false;
            }
            memcpy(&req, input, sizeof(req));
            if (req.device >= n_backends) {
                return false;
            }
            ggml_init_params ip = { (1 + GGML_MAX_SRC)*ggml_tensor_overhead(), nullptr, /*no_alloc*/ true };
            ggml_context_ptr ctx(ggml_init(ip));
            ggml_tensor * op = adamas_deserialize(ctx.get(), req.op);
            if (!op) {
                return false;
            }
            for (int i = 0; i < GGML_MAX_SRC; i++) {
                if (req.src[i].type != -1 && !(op->src[i] = adamas_deserialize(ctx.get(), req.src[i]))) {
                    return false;
                }
            }
            ggml_backend_dev_t dev = ggml_backend_get_device(backends[req.device]);
            adamas_supports_op_rsp rsp = {};
            // only our ops: the answer is theirs, and no other backend code sees made-up tensors
            static const char * refuse = std::getenv(GGML_RPC_ADAMAS_TEST_REFUSE_ENV);
            rsp.supported = ggml_rpc_adamas_is_op(op) && ggml_backend_dev_supports_op(dev, op) &&
                            !(refuse && strcmp(refuse, ggml_op_name(op->op)) == 0);
            snprintf(rsp.device, sizeof(rsp.device), "%s", ggml_backend_dev_name(dev));
            output.assign((const uint8_t *) &rsp, (const uint8_t *) &rsp + sizeof(rsp));
            return true;
        }
        default:
            return false;
    }
}
