"""Shared fixtures: the default model, tiny random models, one loaded Llama, and a CLI runner."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import adamas_gguf  # first: it must load our libllama before anything imports llama_cpp
from adamas_gguf import models

REPO = Path(__file__).resolve().parent.parent
TINY_PY = REPO / "models" / "tiny.py"

# tiny shapes the tests run: plain MHA, GQA with 4 and 2 query heads per KV head, a non-power-of-two head
TINY_SHAPES = ("mha-d64", "gqa4-d64", "gqa2-d80")

# a context small enough to be cheap, large enough for every prompt of the tests
N_CTX = 512


def load_tiny_module():
    """models/tiny.py of this repository, imported from its path (it is not part of the package)."""
    name = "adamas_tiny_models"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, TINY_PY)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up while the module runs
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def tiny():
    return load_tiny_module()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, tiny) -> Path:
    """A directory with NAME.gguf for each shape in TINY_SHAPES (random weights, seeded)."""
    d = tmp_path_factory.mktemp("tiny_models")
    for name in TINY_SHAPES:
        tiny.write_model(tiny.SHAPES[name], d / f"{name}.gguf")
    return d


@pytest.fixture(scope="session")
def tiny_model(tiny_models) -> Path:
    return tiny_models / "mha-d64.gguf"


@pytest.fixture(scope="session")
def default_model() -> Path:
    """The default model (SmolLM2-135M-Instruct), fetched into the cache on first use."""
    try:
        return models.default_model_path()
    except models.ModelUnavailable as e:
        pytest.fail(f"the default model is needed by this test: {e}")


@pytest.fixture(scope="session")
def llm(default_model):
    """One Llama on the default model, shared by the tests (loads are what costs time)."""
    m = adamas_gguf.Llama(str(default_model), n_ctx=N_CTX, seed=42, verbose=False)
    yield m
    m.close()


def cli_env(**extra: str) -> dict:
    env = dict(os.environ)
    env.pop("LLAMA_CPP_LIB_PATH", None)
    env.update(extra)
    return env


def run_cli(*args: str, env: dict | None = None, timeout: float = 300,
            **kwargs) -> subprocess.CompletedProcess:
    """Run `python -m adamas_gguf ARGS...` with this interpreter; text output (UTF-8, strict)."""
    return subprocess.run([sys.executable, "-m", "adamas_gguf", *map(str, args)],
                          capture_output=True, text=True, encoding="utf-8", errors="strict",
                          stdin=subprocess.DEVNULL, env=cli_env() if env is None else env,
                          timeout=timeout, **kwargs)


@pytest.fixture(scope="session")
def cli():
    """The helper that runs the CLI as a subprocess: cli("run", "-p", "...") -> CompletedProcess."""
    return run_cli
