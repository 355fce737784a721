#pragma once
// The registries of the rpc-servers named by a --rpc argument, "HOST:PORT[,HOST:PORT...]", for our tools
// (test-backend-ops --rpc, bench-adamas-decode --rpc). The RPC backend's ggml_backend_rpc_add_server is looked up
// at run time, so the tools need no link-time ggml-rpc; every entry is checked before the first connection
// because ggml-rpc aborts on a server it cannot reach.

#include "ggml-backend.h"

#include <cstdio>
#include <string>
#include <vector>

// false (the reason on stderr) without an RPC backend, on an empty or malformed entry, or a server without devices
static bool adamas_rpc_server_regs(const std::string & servers, std::vector<ggml_backend_reg_t> & regs) {
    ggml_backend_reg_t rpc = ggml_backend_reg_by_name("RPC");
    auto add_server = rpc ? (ggml_backend_reg_t (*)(const char *)) ggml_backend_reg_get_proc_address(rpc, "ggml_backend_rpc_add_server") : nullptr;
    if (!add_server) {
        fprintf(stderr, "--rpc: this ggml has no RPC backend (build with GGML_RPC=ON: ADAMAS_BUILD_RPC)\n");
        return false;
    }
    std::vector<std::string> endpoints;
    for (size_t p = 0;; ) {
        const size_t e = servers.find(',', p);
        endpoints.push_back(servers.substr(p, e == std::string::npos ? std::string::npos : e - p));
        if (endpoints.back().empty() || endpoints.back().find(':') == std::string::npos) {
            fprintf(stderr, "--rpc %s: each server is HOST:PORT (an empty or bad entry)\n", servers.c_str());
            return false;
        }
        if (e == std::string::npos) {
            break;
        }
        p = e + 1;
    }
    for (const std::string & endpoint : endpoints) {
        ggml_backend_reg_t reg = add_server(endpoint.c_str());
        if (!reg || ggml_backend_reg_dev_count(reg) == 0) {
            fprintf(stderr, "--rpc: %s: no devices\n", endpoint.c_str());
            return false;
        }
        regs.push_back(reg);
    }
    return true;
}
