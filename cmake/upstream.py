#!/usr/bin/env python3
"""Obtain the pinned upstream llama.cpp, verify it, overlay our sources and apply our patches.

Upstream is llama.cpp exactly as vendored in the llama-cpp-python sdist pinned below. Nothing of it is
committed to this repository: the build calls `prepare`, which

  1. finds the sdist (the cache, or `pip download --no-deps --no-binary :all:`) and checks its sha256,
     or takes the archive or tree named by $ADAMAS_UPSTREAM and checks its content digest;
  2. extracts `vendor/llama.cpp` (less the folders no build needs: see EXCLUDE) into a staging tree;
  3. copies our own source files in (ggml_adamas/{src,include} -> ggml/{src,include},
     cpp/{src,include,common,tools} -> {src,include,common,tools}); they may add files, never replace
     upstream ones;
  4. applies our numbered patches (ggml_adamas/patches, cpp/patches) in the order of their numbers;
  5. syncs the staging tree into the destination by content, so that an incremental build recompiles
     only what changed.

`pack` writes the trimmed tree as a .tar.xz (about 8 MiB) for machines that reach no package index;
point $ADAMAS_UPSTREAM at it there.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST_NAME = "llama-cpp-python"
SDIST_VERSION = "0.3.36"
SDIST_FILE = f"llama_cpp_python-{SDIST_VERSION}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
# From the sdist's CHANGELOG ("update llama.cpp to ggml-org/llama.cpp@0c1e57098").
LLAMA_CPP_COMMIT = "0c1e57098"
# sha256 over the trimmed tree (see tree_digest); lets a trimmed archive or an extracted tree be verified.
TREE_DIGEST = "3d3cd2d58585f8b616284e711676189a6a519a491e2b15e7466ed39de2c374d4"

VENDOR_PREFIX = f"llama_cpp_python-{SDIST_VERSION}/vendor/llama.cpp/"
# Not needed by any build or test of ours: vocab files, docs, examples, the web UI, CI config and git
# metadata (".git" also covers .gitignore and .gitmodules).
EXCLUDE = ("models/", "docs/", "examples/", "media/", "tools/ui/", ".github/", ".devops/", ".git")

ROOT = Path(__file__).resolve().parent.parent


def _load_cache_module():
    # The package's stdlib-only helper, loaded by path: importing adamas_gguf would load its libraries.
    spec = importlib.util.spec_from_file_location("adamas_gguf_cache", ROOT / "python/adamas_gguf/_cache.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_cache = _load_cache_module()
cache_dir, sha256_file = _cache.cache_dir, _cache.sha256_file

OVERLAYS = (("ggml_adamas/src", "ggml/src"), ("ggml_adamas/include", "ggml/include"),
            ("ggml_adamas/tests", "tests"), ("cpp/src", "src"), ("cpp/include", "include"),
            ("cpp/common", "common"), ("cpp/tools", "tools"))
PATCH_DIRS = ("ggml_adamas/patches", "cpp/patches")
PATCH_RE = re.compile(r"^(\d{4})-[A-Za-z0-9_.-]+\.patch$")
STAMP = ".adamas-stamp.json"


class UpstreamError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"adamas_gguf upstream: {msg}", file=sys.stderr, flush=True)


def excluded(rel: str) -> bool:
    return any(rel == e.rstrip("/") or rel.startswith(e) for e in EXCLUDE)


def tree_digest(files: dict[str, bytes]) -> str:
    """Digest of a tree given as {relative path: content}, excluded paths already removed."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(rel.encode() + b"\0" + hashlib.sha256(files[rel]).hexdigest().encode() + b"\n")
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# reading upstream into memory: {relative path: bytes}, trimmed


def read_tar(path: Path, prefix: str | None) -> dict[str, bytes]:
    """Regular files of a tar archive; with `prefix`, only those under it (prefix removed)."""
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(path) as tf:
            for m in tf:
                name = m.name
                if prefix is not None:
                    if not name.startswith(prefix):
                        continue
                    name = name[len(prefix):]
                if not m.isfile() or not name or excluded(name):
                    continue
                if name.startswith("/") or ".." in Path(name).parts:
                    raise UpstreamError(f"{path}: unsafe member name {m.name!r}")
                files[name] = tf.extractfile(m).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UpstreamError(f"{path}: cannot read archive ({e})") from e
    return files


def read_dir(path: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(path):
        reldir = os.path.relpath(dirpath, path)
        reldir = "" if reldir == "." else reldir.replace(os.sep, "/") + "/"
        dirnames[:] = [d for d in dirnames if not excluded(reldir + d + "/")]
        for fn in filenames:
            rel = reldir + fn
            if not excluded(rel) and os.path.isfile(os.path.join(dirpath, fn)):
                files[rel] = Path(dirpath, fn).read_bytes()
    return files


def download_sdist(dest: Path) -> Path:
    """pip download the pinned sdist into dest (a cache folder) and return its path."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="adamas-dl-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "-d", tmp, f"{SDIST_NAME}=={SDIST_VERSION}"]
        # pip prepares the sdist's metadata; without isolation it uses our scikit-build-core instead of
        # building the sdist's build requirements (cmake among them) from source under --no-binary.
        try:
            import scikit_build_core  # noqa: F401
            cmd.insert(4, "--no-build-isolation")
        except ImportError:
            pass
        log("pip " + " ".join(cmd[3:]))
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        got = Path(tmp) / SDIST_FILE
        if r.returncode != 0 or not got.is_file():
            raise UpstreamError(
                f"could not download {SDIST_NAME}=={SDIST_VERSION} with pip:\n{r.stdout[-3000:]}\n"
                "Offline? Set ADAMAS_UPSTREAM to the sdist, to a trimmed archive made by "
                "`python cmake/upstream.py pack OUT.tar.xz`, or to an extracted llama.cpp tree.")
        check_sdist(got)
        final = dest / SDIST_FILE
        shutil.move(str(got), final)
        return final


def check_sdist(path: Path) -> None:
    digest = sha256_file(path)
    if digest != SDIST_SHA256:
        raise UpstreamError(f"{path}: sha256 {digest} is not the pinned {SDIST_SHA256} "
                            f"of {SDIST_FILE}; refusing to build from it")


def load_upstream() -> tuple[dict[str, bytes], str]:
    """The trimmed upstream tree and a description of where it came from."""
    src = os.environ.get("ADAMAS_UPSTREAM")
    if src:
        p = Path(src).expanduser()
        if not p.exists():
            raise UpstreamError(f"ADAMAS_UPSTREAM={src}: no such file or directory")
        if p.is_dir():
            if (p / "vendor" / "llama.cpp").is_dir():  # an extracted sdist
                p = p / "vendor" / "llama.cpp"
            files, origin = read_dir(p), f"tree {p}"
        elif p.name.endswith(".tar.gz") and sha256_file(p) == SDIST_SHA256:
            files, origin = read_tar(p, VENDOR_PREFIX), f"sdist {p}"
        else:
            files, origin = read_tar(p, None), f"archive {p}"
        digest = tree_digest(files)
        if TREE_DIGEST.startswith("@"):
            raise UpstreamError("TREE_DIGEST is not set in cmake/upstream.py")
        if digest != TREE_DIGEST:
            raise UpstreamError(
                f"ADAMAS_UPSTREAM={src}: its llama.cpp tree (digest {digest}) is not the one vendored in "
                f"{SDIST_NAME} {SDIST_VERSION} (digest {TREE_DIGEST})")
        return files, origin
    cached = cache_dir() / "upstream" / SDIST_FILE
    if cached.is_file():
        try:
            check_sdist(cached)
        except UpstreamError as e:
            log(f"{e}; downloading again")
            cached.unlink()
    if not cached.is_file():
        cached = download_sdist(cached.parent)
    else:
        log(f"using cached {cached}")
    files = read_tar(cached, VENDOR_PREFIX)
    if not TREE_DIGEST.startswith("@") and tree_digest(files) != TREE_DIGEST:
        raise UpstreamError(f"{cached}: unexpected content (tree digest mismatch)")
    return files, f"sdist {cached}"


# ---------------------------------------------------------------------------------------------
# our overlay and patches


def overlay_files() -> dict[str, Path]:
    """{upstream relative path: our file} for every source file we add."""
    out: dict[str, Path] = {}
    for ours, theirs in OVERLAYS:
        base = ROOT / ours
        if not base.is_dir():
            continue
        for p in sorted(base.rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts:
                out[theirs + "/" + p.relative_to(base).as_posix()] = p
    return out


def patch_files() -> list[Path]:
    patches: dict[int, Path] = {}
    for d in PATCH_DIRS:
        for p in sorted((ROOT / d).glob("*")):
            if p.name.startswith(".") or p.name == "README.md":
                continue
            m = PATCH_RE.match(p.name)
            if not m:
                raise UpstreamError(f"{p.relative_to(ROOT)}: patch names must look like NNNN-what.patch")
            n = int(m.group(1))
            if n in patches:
                raise UpstreamError(f"{p.relative_to(ROOT)} and {patches[n].relative_to(ROOT)} share number {n:04d}")
            patches[n] = p
    return [patches[n] for n in sorted(patches)]


def apply_patch(tree: Path, patch: Path) -> None:
    rel = patch.relative_to(ROOT)
    git = shutil.which("git")
    if git:
        # The ceiling keeps git from treating an enclosing repository (ours) as the patch's root.
        env = dict(os.environ, GIT_CEILING_DIRECTORIES=str(tree.parent))
        cmd = [git, "apply", "-p1", "--whitespace=nowarn", str(patch)]
    elif shutil.which("patch"):
        env = None
        cmd = ["patch", "-p1", "--batch", "--forward", "--silent", "-i", str(patch)]
    else:
        raise UpstreamError("neither git nor patch is installed; one is needed to apply our patches")
    r = subprocess.run(cmd, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        raise UpstreamError(f"patch {rel} does not apply to llama.cpp from {SDIST_NAME} {SDIST_VERSION}:\n"
                            f"{r.stdout.strip()}")
    log(f"applied {rel}")


def inputs_digest() -> str:
    """Digest of everything prepare's output depends on besides upstream itself."""
    h = hashlib.sha256(Path(__file__).read_bytes())
    for rel, p in sorted(overlay_files().items()):
        h.update(rel.encode() + b"\0" + p.read_bytes())
    for p in patch_files():
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def write_tree(files: dict[str, bytes], dest: Path) -> None:
    for rel, data in files.items():
        p = dest / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def sync(src: Path, dest: Path) -> int:
    """Make dest equal src by content; untouched files keep their mtime. Returns files written."""
    changed = 0
    seen = set()
    for dirpath, _, filenames in os.walk(src):
        for fn in filenames:
            s = Path(dirpath, fn)
            rel = s.relative_to(src)
            seen.add(rel)
            d = dest / rel
            data = s.read_bytes()
            if d.is_file() and d.read_bytes() == data:
                continue
            d.parent.mkdir(parents=True, exist_ok=True)
            d.write_bytes(data)
            shutil.copymode(s, d)
            changed += 1
    for dirpath, _, filenames in os.walk(dest):
        for fn in filenames:
            d = Path(dirpath, fn)
            rel = d.relative_to(dest)
            if rel not in seen and rel.name != STAMP:
                d.unlink()
                changed += 1
    return changed


def stage_and_sync(dest: Path, files: dict, finish=None) -> int:
    """Write files into a staging tree beside dest, let finish(staging) change it, then sync dest to it (only
    changed files are touched, so the build recompiles what changed); returns the number of files updated."""
    staging = dest.parent / (dest.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        write_tree(files, staging)
        if finish:
            finish(staging)
        dest.mkdir(parents=True, exist_ok=True)
        return sync(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def up_to_date(dest: Path, stamp: Path, want: dict) -> bool:
    """True if dest was made from these inputs (its stamp says so)."""
    try:
        if stamp.is_file() and json.loads(stamp.read_text()) == want:
            log(f"{dest} is up to date")
            return True
    except ValueError:
        pass  # a torn stamp: make the tree again
    return False


def prepare(dest: Path) -> None:
    key = inputs_digest()
    stamp = dest / STAMP
    want = {"sdist": SDIST_FILE, "tree": TREE_DIGEST, "inputs": key,
            "override": os.environ.get("ADAMAS_UPSTREAM", "")}
    if up_to_date(dest, stamp, want):
        return
    files, origin = load_upstream()
    log(f"llama.cpp {LLAMA_CPP_COMMIT} from {origin} ({len(files)} files)")
    def overlay_and_patch(staging: Path) -> None:
        for rel, p in overlay_files().items():
            if rel in files:
                raise UpstreamError(f"{p.relative_to(ROOT)} would replace upstream {rel}; "
                                    "change upstream files with a numbered patch instead")
            t = staging / rel
            t.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, t)
        for p in patch_files():
            apply_patch(staging, p)

    n = stage_and_sync(dest, files, overlay_and_patch)
    log(f"{dest}: {n} files updated")
    stamp.write_text(json.dumps(want))


# what an rpc-server needs: ggml and tools/rpc
PRISTINE_PARTS = ("ggml/", "tools/rpc/")


def pristine(dest: Path) -> None:
    """ggml and tools/rpc of upstream exactly as pinned, without our files or patches: an rpc-server built from
    it is what a user of upstream's llama.cpp runs, the peer tests/test_rpc.py checks our client against."""
    stamp = dest / STAMP
    want = {"sdist": SDIST_FILE, "tree": TREE_DIGEST, "parts": list(PRISTINE_PARTS),
            "override": os.environ.get("ADAMAS_UPSTREAM", "")}
    if up_to_date(dest, stamp, want):
        return
    files, origin = load_upstream()
    files = {rel: data for rel, data in files.items() if rel.startswith(PRISTINE_PARTS)}
    n = stage_and_sync(dest, files)
    log(f"{dest}: pristine upstream ggml and tools/rpc from {origin}, {n} files updated")
    stamp.write_text(json.dumps(want))


def pack(out: Path) -> None:
    """Write the trimmed, unpatched upstream tree as .tar.xz (for offline machines)."""
    saved = os.environ.pop("ADAMAS_UPSTREAM", None)
    try:
        files, origin = load_upstream()
    finally:
        if saved is not None:
            os.environ["ADAMAS_UPSTREAM"] = saved
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w:xz", preset=6) as tf:
        for rel in sorted(files):
            ti = tarfile.TarInfo(rel)
            ti.size = len(files[rel])
            ti.mode = 0o644
            tf.addfile(ti, io.BytesIO(files[rel]))
    log(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {len(files)} files) from {origin}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="extract, overlay and patch upstream into DEST")
    p.add_argument("dest", type=Path)
    p = sub.add_parser("pristine", help="extract upstream's ggml and tools/rpc, unpatched, into DEST")
    p.add_argument("dest", type=Path)
    p = sub.add_parser("pack", help="write the trimmed upstream tree as OUT.tar.xz")
    p.add_argument("out", type=Path)
    sub.add_parser("digest", help="print the trimmed tree digest of the pinned sdist")
    sub.add_parser("info", help="print the pinned upstream as JSON")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "prepare":
            prepare(a.dest.resolve())
        elif a.cmd == "pristine":
            pristine(a.dest.resolve())
        elif a.cmd == "pack":
            pack(a.out.resolve())
        elif a.cmd == "digest":
            print(tree_digest(load_upstream()[0]))
        else:
            print(json.dumps({"sdist": f"{SDIST_NAME}=={SDIST_VERSION}", "sha256": SDIST_SHA256,
                              "llama_cpp_commit": LLAMA_CPP_COMMIT}))
    except UpstreamError as e:
        print(f"adamas_gguf upstream: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
