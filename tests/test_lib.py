"""The libraries in use are this package's: checked in the process, not assumed from configuration."""
from __future__ import annotations

import ctypes
import shutil
import subprocess
import sys
from pathlib import Path

import adamas_gguf
import llama_cpp
from adamas_gguf import _lib

from conftest import cli_env

OURS = ("libllama.so", "libggml.so", "libggml-base.so", "libggml-cpu.so")


def test_loaded_libraries_are_ours():
    loaded = _lib.loaded_libraries()
    lib_dir = Path(adamas_gguf.LIB_DIR).resolve()
    for name in OURS:
        assert name in loaded, f"{name} is not mapped into the process: {loaded}"
    for name, path in loaded.items():  # every libllama/libggml* mapped, not only the four expected
        assert Path(path).resolve().parent == lib_dir, f"{name} was loaded from {path}, not {lib_dir}"


def test_llama_cpp_uses_our_libllama():
    assert Path(llama_cpp.llama_cpp._lib._name).resolve() == (Path(adamas_gguf.LIB_DIR) / "libllama.so").resolve()
    assert llama_cpp.llama_cpp._lib is _lib.lib


def test_library_version_matches_package():
    fn = _lib.lib.llama_adamas_version
    fn.argtypes, fn.restype = [], ctypes.c_char_p
    assert fn().decode() == adamas_gguf.__version__
    assert _lib.LIB_VERSION == adamas_gguf.__version__


def test_upstream_is_the_pinned_release():
    assert "0.3.36" in adamas_gguf.UPSTREAM
    assert "llama-cpp-python" in adamas_gguf.UPSTREAM


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(**env),
                          timeout=120)


def _copy_of_our_libs(tmp_path: Path) -> Path:
    other = tmp_path / "other_lib"
    other.mkdir()
    for p in Path(adamas_gguf.LIB_DIR).iterdir():
        if p.name.startswith(("libllama", "libggml")):
            shutil.copy2(p, other / p.name)
    return other


def test_llama_cpp_imported_first_is_refused(tmp_path):
    # llama_cpp loads another libllama (a copy of ours, elsewhere); importing adamas_gguf afterwards must
    # refuse with a LibraryError (an ImportError) that says what to do, not run on the wrong library.
    other = _copy_of_our_libs(tmp_path)
    code = ("import os, llama_cpp\n"
            "del os.environ['LLAMA_CPP_LIB_PATH']\n"
            "try:\n"
            "    import adamas_gguf\n"
            "except ImportError as e:\n"
            "    print(type(e).__name__, '|', e)\n"
            "else:\n"
            "    print('imported')\n")
    r = _python(code, LLAMA_CPP_LIB_PATH=str(other))
    assert r.returncode == 0, r.stderr
    out = r.stdout.strip()
    assert out.startswith("LibraryError |"), out
    assert "import adamas_gguf before llama_cpp" in out
    assert str(other) in out


def test_llama_cpp_lib_path_elsewhere_is_refused(tmp_path):
    other = _copy_of_our_libs(tmp_path)
    r = _python("import adamas_gguf", LLAMA_CPP_LIB_PATH=str(other))
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("adamas_gguf._lib.LibraryError:"), r.stderr
    assert "LLAMA_CPP_LIB_PATH" in last and str(other) in last


def test_llama_cpp_lib_path_to_ours_is_accepted():
    r = _python("import adamas_gguf, llama_cpp; print(llama_cpp.llama_cpp._lib._name)",
                LLAMA_CPP_LIB_PATH=str(adamas_gguf.LIB_DIR))
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()).resolve() == (Path(adamas_gguf.LIB_DIR) / "libllama.so").resolve()
