"""`python -m adamas_gguf rpc-server`: upstream's rpc-server (ggml's RPC backend), built from our patched tree
with the Adamas ops and the Adamas wire version (a build with ADAMAS_BUILD_RPC: `make rpc`). Clients put
layers on it with `run --rpc HOST:PORT` or `Llama(..., rpc_servers="HOST:PORT")`.

The flags are checked here (one line and exit code 2 on a bad one: upstream's binary exits 0 on an unknown
flag), then this process replaces itself with the binary (os.execv): the process id, signals and exit code
are the server's own.
"""
from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from . import base
from .base import UserError, int_type

HOST, PORT = "127.0.0.1", 50052  # upstream rpc-server's defaults
BINARY = "ggml-rpc-server"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _host(s: str) -> str:
    # upstream splits host:port at the first ':': no IPv6 literals; no spaces either
    if not s or ":" in s or any(c.isspace() for c in s):
        raise argparse.ArgumentTypeError(f"{s!r} is not a host name or IPv4 address (e.g. 127.0.0.1, 0.0.0.0)")
    return s


def _devices(s: str) -> str:
    names = s.split(",")
    for n in names:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", n):
            raise argparse.ArgumentTypeError(f"{s!r}: a comma-separated list of device names, e.g. CPU or "
                                             "CUDA0,CUDA1")
    return s


def add_parser(sub) -> None:
    p = base.add_command(
        sub, "rpc-server", help="serve this machine's CPU or GPU to other machines (ggml's RPC backend)",
        description="Start upstream llama.cpp's rpc-server, built from this package's patched tree (a build "
                    "with ADAMAS_BUILD_RPC: `make rpc`), so that clients can put model layers on this "
                    "machine's device: `python -m adamas_gguf run --rpc HOST:PORT`, or "
                    "adamas_gguf.Llama(..., rpc_servers=\"HOST:PORT\"). It runs the Adamas ops when the "
                    "client's adamas_gguf speaks the same Adamas wire version; other clients' layers there "
                    "decode dense. It serves one client at a time.\n\n"
                    "SECURITY: RPC has no authentication and no encryption. Anyone who reaches the port can run "
                    "computations on the device and read and write its memory. The default host, 127.0.0.1, "
                    "accepts this machine only; give --host 0.0.0.0 (or an address) only on a trusted private "
                    "network.",
        epilog=f"example:\n  python -m adamas_gguf rpc-server --port {PORT} -t 4\n"
               f"  python -m adamas_gguf run --rpc 127.0.0.1:{PORT} -p \"The capital of France is\" --budget 64")
    p.add_argument("--host", "-H", type=_host, default=HOST, metavar="ADDR",
                   help=f"the address to listen on; anything but 127.0.0.1 exposes the device to the network "
                        f"(see SECURITY above) (default: {HOST})")
    p.add_argument("--port", "-p", type=int_type(1, 65535), default=PORT, metavar="N",
                   help=f"the TCP port to listen on (default: {PORT})")
    p.add_argument("--device", "-d", type=_devices, default=None, metavar="DEV[,DEV...]",
                   help="the devices to serve, by ggml name: CPU, CUDA0, ... (default: the GPUs if the build "
                        "has any, else the CPU)")
    p.add_argument("-t", "--threads", type=int_type(1, 4096), default=None, metavar="N",
                   help="CPU threads for the CPU device (default: half the CPU cores, upstream's)")
    p.add_argument("-c", "--cache", action="store_true",
                   help="keep large tensors the clients send in a local file cache ($LLAMA_CACHE/rpc, else "
                        "~/.cache/llama.cpp/rpc), so a later load skips sending them (default: off)")


def _binary() -> Path:
    from .. import _build_info
    path = Path(_build_info.__file__).parent / "bin" / BINARY
    if not getattr(_build_info, "RPC", False) or not path.is_file():
        raise UserError("this adamas_gguf build has no rpc-server; build it with `make rpc` (or pip install "
                        "with -Ccmake.define.ADAMAS_BUILD_RPC=ON)")
    return path


def _check_devices(spec: str) -> None:
    from .. import rpc
    known = rpc.local_device_names()
    unknown = [n for n in spec.split(",") if n not in known]
    if unknown:
        raise UserError(f"--device {spec}: no device {', '.join(unknown)} in this build; its devices: "
                        f"{', '.join(known)}")


def main(args, parser) -> int:
    binary = _binary()
    if args.device is not None:
        _check_devices(args.device)
    argv = [str(binary), "-H", args.host, "-p", str(args.port)]
    if args.threads is not None:
        argv += ["-t", str(args.threads)]
    if args.device is not None:
        argv += ["-d", args.device]
    if args.cache:
        argv.append("-c")
    if args.host not in LOOPBACK:
        base.print_note(f"listening on {args.host}: RPC has no authentication; anyone who reaches port "
                        f"{args.port} can use this machine's device and read its memory")
    os.execv(binary, argv)
    return base.EXIT_ERROR  # not reached
