"""The build's contract: upstream is verified and patched as written, llama.cpp is compiled once."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import adamas_gguf

REPO = Path(__file__).resolve().parent.parent
UPSTREAM_PY = REPO / "cmake" / "upstream.py"


def _load_upstream_module():
    spec = importlib.util.spec_from_file_location("adamas_upstream", UPSTREAM_PY)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


up = _load_upstream_module()


@pytest.fixture(scope="module")
def sdist() -> Path:
    """The pinned sdist, as cached by the build."""
    p = up.cache_dir() / "upstream" / up.SDIST_FILE
    assert p.is_file(), f"the build should have cached {p}"
    return p


def _prepare(root: Path, dest: Path, upstream: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, ADAMAS_UPSTREAM=str(upstream))
    return subprocess.run([sys.executable, str(root / "cmake" / "upstream.py"), "prepare", str(dest)],
                          capture_output=True, text=True, env=env)


def _fake_root(tmp_path: Path) -> Path:
    """A copy of our build inputs (helper, sources, patches) that a test may change."""
    root = tmp_path / "repo"
    for d in ("cmake", "cpp", "ggml_adamas"):
        if (REPO / d).is_dir():
            shutil.copytree(REPO / d, root / d)
    (root / "python" / "adamas_gguf").mkdir(parents=True)
    shutil.copy(REPO / "python" / "adamas_gguf" / "_cache.py", root / "python" / "adamas_gguf")
    return root


def test_llama_cpp_python_has_no_library_of_its_own():
    """One compile: llama-cpp-python was installed Python-only and runs on our libllama."""
    import llama_cpp

    own = Path(llama_cpp.__file__).parent / "lib"
    assert not list(own.glob("libllama*")), f"llama-cpp-python built its own llama.cpp in {own}"
    assert Path(llama_cpp.llama_cpp._lib._name).parent == adamas_gguf.LIB_DIR


def test_build_records_versions():
    from adamas_gguf import _build_info

    assert _build_info.VERSION == adamas_gguf.__version__
    assert _build_info.UPSTREAM == adamas_gguf.UPSTREAM == \
        f"llama-cpp-python {up.SDIST_VERSION} (llama.cpp {up.LLAMA_CPP_COMMIT})"


def test_sdist_matches_pinned_hash(sdist):
    assert up.sha256_file(sdist) == up.SDIST_SHA256


def test_prepare_applies_patches_and_is_incremental(tmp_path, sdist):
    dest = tmp_path / "llama.cpp"
    r = _prepare(REPO, dest, sdist)
    assert r.returncode == 0, r.stderr
    patches = up.patch_files()
    assert patches, "there should be at least one patch"
    for p in patches:
        assert f"applied {p.relative_to(REPO)}" in r.stderr
    assert "llama-adamas.cpp" in (dest / "src" / "CMakeLists.txt").read_text()
    assert (dest / "src" / "llama-adamas.cpp").read_bytes() == (REPO / "cpp/src/llama-adamas.cpp").read_bytes()
    assert not (dest / "models").exists() and not (dest / "docs").exists()
    mtime = (dest / "src" / "llama.cpp").stat().st_mtime_ns
    r = _prepare(REPO, dest, sdist)
    assert r.returncode == 0 and "up to date" in r.stderr
    assert (dest / "src" / "llama.cpp").stat().st_mtime_ns == mtime


def test_pristine_is_upstream_alone(tmp_path, sdist):
    # the unpatched tree the tests' upstream rpc-server is built from: ggml and tools/rpc as pinned, nothing of ours
    dest = tmp_path / "pristine"
    env = dict(os.environ, ADAMAS_UPSTREAM=str(sdist))
    r = subprocess.run([sys.executable, str(UPSTREAM_PY), "pristine", str(dest)], capture_output=True, text=True,
                       env=env)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in dest.iterdir() if not p.name.startswith(".")) == ["ggml", "tools"]
    assert [p.name for p in (dest / "tools").iterdir()] == ["rpc"]
    files = up.read_tar(sdist, up.VENDOR_PREFIX)
    for rel in ("ggml/include/ggml.h", "ggml/src/ggml-rpc/ggml-rpc.cpp", "tools/rpc/rpc-server.cpp"):
        assert (dest / rel).read_bytes() == files[rel], rel
    assert "ADAMAS" not in (dest / "ggml/include/ggml.h").read_text()
    assert [p.name for p in dest.rglob("*adamas*")] == [up.STAMP]


def test_patch_that_does_not_apply_is_named(tmp_path, sdist):
    root = _fake_root(tmp_path)
    bad = root / "cpp" / "patches" / "0099-does-not-apply.patch"
    bad.write_text("--- a/src/llama.cpp\n+++ b/src/llama.cpp\n@@ -1,3 +1,3 @@\n-no such line\n+x\n a\n b\n")
    r = _prepare(root, tmp_path / "out", sdist)
    assert r.returncode == 1
    assert "patch cpp/patches/0099-does-not-apply.patch does not apply" in r.stderr


def test_patches_need_unique_numbers(tmp_path, sdist):
    root = _fake_root(tmp_path)
    first = up.patch_files()[0]
    (root / "ggml_adamas" / "patches").mkdir(parents=True, exist_ok=True)
    shutil.copy(first, root / "ggml_adamas" / "patches" / (first.name[:5] + "duplicate.patch"))
    r = _prepare(root, tmp_path / "out", sdist)
    assert r.returncode == 1 and "share number" in r.stderr


def test_modified_upstream_tree_is_refused(tmp_path, sdist):
    tree = tmp_path / "upstream"
    up.write_tree(up.read_tar(sdist, up.VENDOR_PREFIX), tree)
    r = _prepare(REPO, tmp_path / "ok", tree)  # an unmodified extracted tree is accepted
    assert r.returncode == 0, r.stderr
    with open(tree / "src" / "llama.cpp", "a") as f:
        f.write("\n// changed\n")
    r = _prepare(REPO, tmp_path / "out", tree)
    assert r.returncode == 1 and "is not the one vendored" in r.stderr


def test_corrupt_sdist_is_refused(tmp_path):
    fake = tmp_path / up.SDIST_FILE
    fake.write_bytes(b"not the sdist")
    r = _prepare(REPO, tmp_path / "out", fake)
    assert r.returncode == 1 and "cannot read archive" in r.stderr


def test_overlay_may_not_replace_upstream_files(tmp_path, sdist):
    root = _fake_root(tmp_path)
    (root / "cpp" / "src" / "llama.cpp").write_text("// not upstream\n")
    r = _prepare(root, tmp_path / "out", sdist)
    assert r.returncode == 1 and "would replace upstream src/llama.cpp" in r.stderr
