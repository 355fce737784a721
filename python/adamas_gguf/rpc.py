"""Layers on other machines: ggml's RPC backend (built with ADAMAS_BUILD_RPC), from Python.

`Llama(path, rpc_servers="host:port,host:port")` puts the model's layers on rpc-servers (`python -m adamas_gguf
rpc-server`), as llama.cpp's `--rpc` does, but for that one model only: the servers' devices are passed to
llama.cpp in the model's device list (llama_model_params.devices) instead of being registered for the whole
process, so another Llama in the same process stays local.

RPC has no authentication and no encryption: whoever reaches a server's port can run graphs on it and read its
memory. Keep servers on 127.0.0.1 or a private network.

The Adamas ops run on a server only if it is an adamas_gguf rpc-server of the same Adamas wire version whose
device supports them (ggml_adamas/src/ggml-rpc/ggml-rpc-adamas.h); otherwise the layers there decode dense and
`Llama.adamas_unavailable_reason` says why.
"""
from __future__ import annotations

import ctypes
import socket
import struct
from typing import List, Optional, Sequence, Union

from . import _build_info
from ._lib import LIB_DIR, llama_cpp

# ggml-rpc.h / transport.h of the pinned upstream (tests/test_rpc.py checks them against the installed header)
RPC_PROTO_VERSION = (7, 0, 0)
RPC_CMD_HELLO = 14
RPC_CONN_CAPS_SIZE = 24
GGML_RPC_MAX_SERVERS = 16
# ggml-rpc-adamas.h: the HELLO response's padding byte of an adamas_gguf rpc-server
ADAMAS_MARK = 0xAD

DEFAULT_PORT = 50052  # upstream rpc-server's
# how long a new server may take to answer the handshake; an rpc-server serves one client at a time, so a
# server busy with another client answers only when that client disconnects
HANDSHAKE_TIMEOUT = 15.0

# enum ggml_backend_dev_type
_DEV_GPU, _DEV_IGPU = 1, 2

__all__ = ["RPCError", "parse_servers", "handshake", "model_devices", "available"]


class RPCError(ConnectionError):
    """An rpc-server cannot be used: nothing listens there, it does not answer, or speaks another protocol."""


def available() -> bool:
    """Whether this build has ggml's RPC backend (ADAMAS_BUILD_RPC)."""
    return bool(getattr(_build_info, "RPC", False)) and bool(llama_cpp.llama_supports_rpc())


def _no_rpc_error() -> ValueError:
    return ValueError("this adamas_gguf build has no RPC backend; rebuild it with "
                      "-Ccmake.define.ADAMAS_BUILD_RPC=ON (make rpc)")


def parse_servers(servers: Union[str, Sequence[str]]) -> List[str]:
    """["host:port", ...] from "host:port,host:port" or a sequence of "host:port"; ValueError says what is wrong."""
    if isinstance(servers, str):
        items = servers.split(",")
    elif isinstance(servers, (list, tuple)) and all(isinstance(s, str) for s in servers):
        items = list(servers)
    else:
        raise ValueError(f"rpc_servers must be a string \"host:port,...\" or a list of \"host:port\" strings, "
                         f"got {servers!r}")
    out: List[str] = []
    for item in items:
        s = item.strip()
        # upstream splits an endpoint at its first ':' (no IPv6 literals)
        host, sep, port = s.partition(":")
        if not s:
            raise ValueError(f"rpc_servers {servers!r}: an empty server entry")
        if not sep or not host or any(c.isspace() for c in host) or ":" in port:
            raise ValueError(f"rpc_servers: {s!r} is not host:port (e.g. 127.0.0.1:{DEFAULT_PORT})")
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"rpc_servers: {s!r}: the port must be a number from 1 to 65535")
        ep = f"{host}:{int(port)}"
        if ep in out:
            raise ValueError(f"rpc_servers: {ep} is given twice")
        out.append(ep)
    if len(out) > GGML_RPC_MAX_SERVERS:
        raise ValueError(f"rpc_servers: {len(out)} servers, at most {GGML_RPC_MAX_SERVERS}")
    return out


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def handshake(endpoint: str, timeout: float = HANDSHAKE_TIMEOUT) -> dict:
    """Upstream's RPC HELLO with the server at endpoint, on a connection of its own: {"version": (major, minor,
    patch), "adamas": whether it is an adamas_gguf rpc-server}. RPCError if it cannot be used: llama.cpp would
    abort the process (connection refused, another protocol) or wait forever (a busy server)."""
    host, _, port = endpoint.partition(":")
    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout)
    except socket.timeout:
        raise RPCError(f"rpc-server {endpoint}: no connection within {timeout:g} s") from None
    except OSError as e:
        raise RPCError(f"rpc-server {endpoint}: cannot connect ({e.strerror or e}); is `python -m adamas_gguf "
                       f"rpc-server --host {host} --port {port}` running there?") from None
    try:
        with sock:
            sock.settimeout(timeout)
            sock.sendall(struct.pack("<BQ", RPC_CMD_HELLO, RPC_CONN_CAPS_SIZE) + bytes(RPC_CONN_CAPS_SIZE))
            size, = struct.unpack("<Q", _recv_exact(sock, 8))
            if size != 4 + RPC_CONN_CAPS_SIZE:
                raise RPCError(f"rpc-server {endpoint}: not an RPC server of ggml's protocol "
                               f"{'.'.join(map(str, RPC_PROTO_VERSION))} (a HELLO answer of {size} bytes)")
            major, minor, patch, pad = _recv_exact(sock, size)[:4]
    except socket.timeout:
        raise RPCError(f"rpc-server {endpoint}: no answer to the handshake within {timeout:g} s; an rpc-server "
                       "serves one client at a time: is another client connected to it?") from None
    except (EOFError, ConnectionError) as e:
        raise RPCError(f"rpc-server {endpoint}: the connection closed during the handshake"
                       f"{f' ({e})' if str(e) else ''}; is it an rpc-server?") from None
    if major != RPC_PROTO_VERSION[0] or minor > RPC_PROTO_VERSION[1]:
        raise RPCError(f"rpc-server {endpoint}: RPC protocol {major}.{minor}.{patch}, this client "
                       f"{'.'.join(map(str, RPC_PROTO_VERSION))}: use an rpc-server from the same llama.cpp")
    return {"version": (major, minor, patch), "adamas": pad == ADAMAS_MARK}


# ---- devices -------------------------------------------------------------------------------------------

_ggml_fns: dict = {}
_handshaken: set = set()  # endpoints this process has registered with ggml (ggml_backend_rpc_add_server)


def _ggml(name: str, argtypes, restype):
    fn = _ggml_fns.get(name)
    if fn is None:
        for lib in ("libggml.so", "libggml-base.so"):  # both are loaded already (by libllama)
            fn = getattr(ctypes.CDLL(str(LIB_DIR / lib)), name, None)
            if fn is not None:
                break
        if fn is None:
            raise RuntimeError(f"{name} is missing from {LIB_DIR}'s libggml")
        fn.argtypes, fn.restype = argtypes, restype
        _ggml_fns[name] = fn
    return fn


def _devices_of(reg) -> list:
    count = _ggml("ggml_backend_reg_dev_count", [ctypes.c_void_p], ctypes.c_size_t)
    get = _ggml("ggml_backend_reg_dev_get", [ctypes.c_void_p, ctypes.c_size_t], ctypes.c_void_p)
    return [get(reg, i) for i in range(count(reg))]


def _local_gpus() -> list:
    """The local GPUs llama.cpp's default device selection would use after the RPC devices (llama.cpp's
    llama_model_load: discrete GPUs, else integrated ones)."""
    n = _ggml("ggml_backend_dev_count", [], ctypes.c_size_t)()
    get = _ggml("ggml_backend_dev_get", [ctypes.c_size_t], ctypes.c_void_p)
    dev_type = _ggml("ggml_backend_dev_type", [ctypes.c_void_p], ctypes.c_int)
    dev_reg = _ggml("ggml_backend_dev_backend_reg", [ctypes.c_void_p], ctypes.c_void_p)
    reg_name = _ggml("ggml_backend_reg_name", [ctypes.c_void_p], ctypes.c_char_p)
    gpus, igpus = [], []
    for i in range(n):
        d = get(i)
        if reg_name(dev_reg(d)) == b"RPC":
            continue
        t = dev_type(d)
        if t == _DEV_GPU:
            gpus.append(d)
        elif t == _DEV_IGPU and not igpus:
            igpus.append(d)
    return gpus or igpus


def model_devices(endpoints: Sequence[str], timeout: float = HANDSHAKE_TIMEOUT) -> ctypes.Array:
    """The NULL-terminated device list for llama_model_params.devices: every device of each server (in the
    order given), then the local GPUs, as llama.cpp orders them. A server new to this process is checked with
    a handshake first; one already in use here only for a listening port (its connection is shared)."""
    if not available():
        raise _no_rpc_error()
    reg = _ggml("ggml_backend_reg_by_name", [ctypes.c_char_p], ctypes.c_void_p)(b"RPC")
    proc = _ggml("ggml_backend_reg_get_proc_address", [ctypes.c_void_p, ctypes.c_char_p], ctypes.c_void_p)
    addr = proc(reg, b"ggml_backend_rpc_add_server") if reg else None
    if not addr:
        raise _no_rpc_error()
    add_server = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)(addr)
    devs = []
    for ep in endpoints:
        if ep in _handshaken:
            host, _, port = ep.partition(":")
            try:  # a dead server would make llama.cpp abort on connect
                socket.create_connection((host, int(port)), timeout=timeout).close()
            except OSError as e:
                raise RPCError(f"rpc-server {ep}: cannot connect ({e.strerror or e})") from None
        else:
            handshake(ep, timeout)
        server = add_server(ep.encode())
        _handshaken.add(ep)
        if not server:
            raise RPCError(f"rpc-server {ep} reports no devices")
        devs += _devices_of(server)
    devs += _local_gpus()
    arr = (ctypes.c_void_p * (len(devs) + 1))(*devs, None)
    return arr


def local_device_names() -> List[str]:
    """The names of this process's ggml devices (CPU, CUDA0, ...), as an rpc-server of this build sees them."""
    n = _ggml("ggml_backend_dev_count", [], ctypes.c_size_t)()
    get = _ggml("ggml_backend_dev_get", [ctypes.c_size_t], ctypes.c_void_p)
    name = _ggml("ggml_backend_dev_name", [ctypes.c_void_p], ctypes.c_char_p)
    return [name(get(i)).decode() for i in range(n)]


def describe(devices: Optional[ctypes.Array]) -> List[str]:
    """Names of a device list (for messages and tests): e.g. ["RPC0", "RPC1"]."""
    if devices is None:
        return []
    name = _ggml("ggml_backend_dev_name", [ctypes.c_void_p], ctypes.c_char_p)
    return [name(d).decode() for d in devices if d]
