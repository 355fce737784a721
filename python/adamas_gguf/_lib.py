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
