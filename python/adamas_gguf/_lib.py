"""Make llama-cpp-python load this package's libllama/libggml* and prove that it did."""
from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

LIB_DIR = Path(__file__).resolve().parent / "lib"
_LIBLLAMA = LIB_DIR / "libllama.so"


class LibraryError(ImportError):
    """Our libraries are missing, or another libllama was (or would be) loaded instead."""


def loaded_libraries() -> dict[str, str]:
    """{file name: path} of the libllama/libggml* shared objects mapped into this process (Linux)."""
    out: dict[str, str] = {}
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(None, 5)
                if len(parts) == 6:
                    path = parts[5].strip()
                    name = os.path.basename(path)
                    if name.startswith(("libllama", "libggml")) and ".so" in name:
                        out.setdefault(name, path)
    except OSError:
        pass
    return out


def _check_not_preloaded() -> None:
    mod = sys.modules.get("llama_cpp.llama_cpp")
    if mod is None:
        return
    other = getattr(getattr(mod, "_lib", None), "_name", "?")
    if Path(other).resolve() != _LIBLLAMA:
        raise LibraryError(
            f"llama_cpp was imported before adamas_gguf and has loaded {other}; "
            "import adamas_gguf before llama_cpp (a process can load only one libllama)")


def _load():
    _check_not_preloaded()
    if not _LIBLLAMA.is_file():
        raise LibraryError(f"{_LIBLLAMA} is missing: adamas_gguf was not built; install it with pip "
                           "(see README.md) rather than importing it from the source tree")
    env = os.environ.get("LLAMA_CPP_LIB_PATH")
    if env and Path(env).resolve() != LIB_DIR:
        raise LibraryError(f"LLAMA_CPP_LIB_PATH={env} points at other libraries; unset it to use adamas_gguf")
    os.environ["LLAMA_CPP_LIB_PATH"] = str(LIB_DIR)
    import llama_cpp  # noqa: F401  (reads LLAMA_CPP_LIB_PATH and loads libllama)
    from llama_cpp import llama_cpp as _ll

    lib = _ll._lib
    if Path(lib._name).resolve() != _LIBLLAMA:
        raise LibraryError(f"llama_cpp loaded {lib._name} instead of {_LIBLLAMA}")
    strays = {n: p for n, p in loaded_libraries().items() if Path(p).resolve().parent != LIB_DIR}
    if strays:
        raise LibraryError(f"libraries from outside {LIB_DIR} are loaded: {strays}")
    try:
        fn_version, fn_upstream = lib.llama_adamas_version, lib.llama_adamas_upstream
    except AttributeError as e:
        raise LibraryError(f"{lib._name} lacks the adamas_gguf API: not built by this package") from e
    for fn in (fn_version, fn_upstream):
        fn.argtypes, fn.restype = [], ctypes.c_char_p
    return llama_cpp, lib, fn_version().decode(), fn_upstream().decode()


llama_cpp, lib, LIB_VERSION, UPSTREAM = _load()

from ._version import __version__ as _pkg_version  # noqa: E402

if LIB_VERSION != _pkg_version:
    raise LibraryError(f"{_LIBLLAMA} is adamas_gguf {LIB_VERSION}, but the Python package is {_pkg_version}; "
                       "reinstall the package")


# ------------------------------------------------------------------------------------------------
# The Adamas C API (llama-adamas.h). Bound on first use rather than at import, so that a library without
# these symbols still imports (and says what is missing, as a LibraryError, when they are needed).

# enum llama_adamas_thr_mode
LLAMA_ADAMAS_THR_FIXED = 0
LLAMA_ADAMAS_THR_RMS = 1
# enum llama_adamas_select_mode
LLAMA_ADAMAS_SELECT_HEAD = 0
LLAMA_ADAMAS_SELECT_GROUP = 1
LLAMA_ADAMAS_SELECT_EXACT = 2  # the reference: each head's true top budget by exact q.k (reads all of K)
LLAMA_ADAMAS_RECENT_AUTO = -1  # n_recent: min(16, budget/4, budget - n_sink)


class llama_adamas_params(ctypes.Structure):
    """struct llama_adamas_params, field by field in the header's order."""

    _fields_ = [
        ("budget", ctypes.c_int32),       # tokens attended per head in a sparse step; 0 = dense
        ("n_dense", ctypes.c_int32),      # the first n_dense full-attention layers stay dense
        ("thr_mode", ctypes.c_int32),     # enum llama_adamas_thr_mode
        ("thr_q", ctypes.c_float),        # threshold (FIXED) or RMS factor (RMS) for queries, > 0
        ("thr_k", ctypes.c_float),        # the same for keys, > 0
        ("select_mode", ctypes.c_int32),  # enum llama_adamas_select_mode
        ("n_sink", ctypes.c_int32),       # first tokens always kept (inside the budget)
        ("n_recent", ctypes.c_int32),     # most recent tokens always kept (inside the budget); -1: AUTO
        ("rerank", ctypes.c_int32),       # 1: off; R > 1: a pool of R*budget by codes, the budget best by exact q.k
    ]


llama_adamas_params_p = ctypes.POINTER(llama_adamas_params)
_ctx_p = llama_cpp.llama_cpp.llama_context_p_ctypes  # c_void_p

# name: (argtypes, restype)
_ADAMAS_SIGNATURES: dict = {
    "llama_adamas_default_params": ([], llama_adamas_params),
    "llama_adamas_params_check": ([llama_adamas_params_p], ctypes.c_char_p),
    "llama_adamas_n_recent": ([llama_adamas_params_p], ctypes.c_int32),
    "llama_adamas_set": ([_ctx_p, llama_adamas_params_p], ctypes.c_int32),
    "llama_adamas_get": ([_ctx_p], llama_adamas_params),
    "llama_adamas_n_sparse_layers": ([_ctx_p], ctypes.c_int32),
    "llama_adamas_n_sparse_steps": ([_ctx_p], ctypes.c_int64),
    "llama_adamas_unavailable_reason": ([_ctx_p], ctypes.c_char_p),
    "llama_adamas_layer_reason": ([_ctx_p, ctypes.c_int32], ctypes.c_char_p),
    "llama_adamas_verify_codes": ([_ctx_p], ctypes.c_int64),
}
_bound: dict = {}


def _fn(name: str):
    """The C function `name`, with its argtypes/restype set; LibraryError if the library lacks it."""
    fn = _bound.get(name)
    if fn is None:
        argtypes, restype = _ADAMAS_SIGNATURES[name]
        try:
            fn = getattr(lib, name)
        except AttributeError:
            raise LibraryError(f"{lib._name} lacks {name} (the Adamas API of llama-adamas.h): it was built "
                               "from an older adamas_gguf; rebuild and reinstall the package") from None
        fn.argtypes, fn.restype = argtypes, restype
        _bound[name] = fn
    return fn


def llama_adamas_default_params() -> llama_adamas_params:
    return _fn("llama_adamas_default_params")()


def llama_adamas_params_check(p: llama_adamas_params) -> str | None:
    """None if p is valid, else the library's message saying what is wrong."""
    msg = _fn("llama_adamas_params_check")(ctypes.byref(p))
    return None if msg is None else msg.decode("utf-8", errors="replace")


def llama_adamas_n_recent(p: llama_adamas_params) -> int:
    """The recent tokens a step with p keeps (AUTO resolved)."""
    return _fn("llama_adamas_n_recent")(ctypes.byref(p))


def llama_adamas_set(ctx: int, p: llama_adamas_params) -> int:
    return _fn("llama_adamas_set")(ctx, ctypes.byref(p))


def llama_adamas_get(ctx: int) -> llama_adamas_params:
    return _fn("llama_adamas_get")(ctx)


def llama_adamas_n_sparse_layers(ctx: int) -> int:
    return _fn("llama_adamas_n_sparse_layers")(ctx)


def llama_adamas_n_sparse_steps(ctx: int) -> int:
    return _fn("llama_adamas_n_sparse_steps")(ctx)


def llama_adamas_unavailable_reason(ctx: int) -> str | None:
    msg = _fn("llama_adamas_unavailable_reason")(ctx)
    return None if msg is None else msg.decode("utf-8", errors="replace")


def llama_adamas_layer_reason(ctx: int, il: int) -> str | None:
    msg = _fn("llama_adamas_layer_reason")(ctx, il)
    return None if msg is None else msg.decode("utf-8", errors="replace")


def llama_adamas_verify_codes(ctx: int) -> int:
    return _fn("llama_adamas_verify_codes")(ctx)
