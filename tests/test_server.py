"""llama-server built from our tree (`make server`): the --adamas-* flags, concurrent slots, sparse steps.

The server runs on 127.0.0.1 as a subprocess (scripts/load_test.py's Server) and is stopped by its own process
id (SIGTERM): it then frees its context, whose sparse decode steps common_adamas_report logs. That count is the
library's own (llama_adamas_n_sparse_steps), so "sparse steps > 0" is the sparse path taken, and the control
within the budget shows that it can be 0.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from adamas_gguf import _build_info

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("adamas_load_test", REPO / "scripts" / "load_test.py")
load_test = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(load_test)

pytestmark = pytest.mark.skipif(not _build_info.SERVER,
                                reason="built without llama-server (make test and make server build it)")

SERVER = Path(_build_info.__file__).parent / "bin" / "llama-server"
N_SLOTS = 4
SLOT_CTX = 512
PROMPT_TOKENS = 300  # past budget 64: the slots' decode steps are sparse
N_PREDICT = 8


def base_args(budget: int, *extra: str) -> list[str]:
    return ["-np", str(N_SLOTS), "-c", str(N_SLOTS*SLOT_CTX), "-t", "2", "-fa", "on", "--no-webui",
            "--adamas-budget", str(budget), *extra]


def start(model: Path, tmp_path: Path, name: str, budget: int, *extra: str) -> "load_test.Server":
    return load_test.Server(SERVER, model, tmp_path / f"{name}.log", base_args(budget, *extra), timeout=300)


@pytest.fixture(scope="module")
def prompts(default_model):
    return load_test.random_prompts(N_SLOTS, PROMPT_TOKENS, load_test.read_n_vocab(default_model), seed=7)


def test_binary_installed():
    assert SERVER.is_file(), f"{SERVER}: built with ADAMAS_BUILD_SERVER but not installed"
    r = subprocess.run([str(SERVER), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    help_text = r.stdout + r.stderr
    for flag in ("--adamas-budget", "--adamas-dense-layers", "--adamas-thr-mode", "--adamas-thr-q",
                 "--adamas-thr-k", "--adamas-select", "--adamas-sink", "--adamas-recent", "--adamas-rerank",
                 "--rerank"):  # upstream's own --rerank is still there, with its meaning
        assert flag in help_text, flag


def test_command_by_name():
    """The `llama-server` command of the venv is this server (it execs the binary)."""
    cmd = Path(sys.executable).parent / "llama-server"
    assert cmd.is_file(), f"{cmd}: the package's llama-server command is not installed"
    r = subprocess.run([str(cmd), "--adamas-budget", "x"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "--adamas-budget 'x'" in r.stderr, r.stderr


@pytest.mark.parametrize("args, words", [
    (["--adamas-budget", "-1"], "--adamas-budget '-1': must be from 0"),
    (["--adamas-budget", "64x"], "--adamas-budget '64x': not an integer"),
    (["--adamas-rerank", "0"], "--adamas-rerank '0': must be from 1"),
    (["--adamas-thr-q", "nan"], "--adamas-thr-q 'nan': must be a finite number > 0"),
    (["--adamas-thr-k", "1e300"], "--adamas-thr-k '1e300': must be a finite number > 0"),
    (["--adamas-select", "best"], "--adamas-select 'best': must be head, group or exact"),
    (["--adamas-thr-mode", "abs"], "--adamas-thr-mode 'abs': must be rms or fixed"),
    (["--adamas-budget", "8", "--adamas-sink", "4", "--adamas-recent", "5"], "more than --adamas-budget 8"),
    (["--adamas-budget", "64", "-fa", "off"], "needs flash attention"),
    (["--adamas-budget", "2000000000", "--adamas-rerank", "4"], "rerank * budget must fit in 32 bits"),
])
def test_bad_value_one_line_before_loading(tmp_path, args, words):
    # the model does not exist: an error about the flag, not the file, shows that nothing was loaded
    r = subprocess.run([str(SERVER), "-m", str(tmp_path / "missing.gguf"), "--port", "1", *args],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and words in lines[0], lines[0]
    assert "missing.gguf" not in r.stderr + r.stdout


def test_bad_value_from_environment(tmp_path):
    env = dict(load_test.os.environ, LLAMA_ARG_ADAMAS_BUDGET="lots")
    r = subprocess.run([str(SERVER), "-m", str(tmp_path / "missing.gguf")], capture_output=True, text=True,
                       timeout=60, env=env)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode != 0 and len(lines) == 1 and "--adamas-budget 'lots'" in lines[0], r.stderr


def test_concurrent_slots_decode_sparse(default_model, prompts, tmp_path):
    with start(default_model, tmp_path, "sparse", 64) as srv:
        res, _ = load_test.run_clients(srv.url, prompts, N_PREDICT)
        log = srv.stop()
    assert srv.proc.returncode == 0, log[-3000:]
    for r in res:
        assert isinstance(r, dict), f"request failed: {r}"
        assert r["tokens_predicted"] == N_PREDICT and r["content"], r
    assert "adamas: budget 64" in log and "sparse layers" in log, log[-3000:]
    steps = load_test.sparse_steps(log)
    assert steps is not None and steps > 0, log[-3000:]


def test_within_budget_no_sparse_steps(default_model, tmp_path):
    """The control: prompts and answers within the budget decode dense, and the count says 0."""
    short = load_test.random_prompts(2, 20, load_test.read_n_vocab(default_model), seed=3)
    with start(default_model, tmp_path, "within", 64) as srv:
        res, _ = load_test.run_clients(srv.url, short, N_PREDICT)
        log = srv.stop()
    assert all(isinstance(r, dict) for r in res), res
    assert load_test.sparse_steps(log) == 0, log[-3000:]


def test_budget_above_context_equals_dense(default_model, prompts, tmp_path):
    # each prompt alone, so that both servers decode the same batches (see load_test.py --check-dense)
    out = {}
    for b in (0, SLOT_CTX + 1):
        with start(default_model, tmp_path, f"eq{b}", b) as srv:
            out[b] = [load_test.complete(srv.url, p, N_PREDICT)["content"] for p in prompts]
            log = srv.stop()
        if b:
            assert load_test.sparse_steps(log) == 0, log[-3000:]
    assert out[0] == out[SLOT_CTX + 1]
    assert len(set(out[0])) > 1  # different prompts, different answers: the comparison has content


def test_unavailable_model_said_once_decodes_dense(tiny_models, tmp_path):
    """head_dim 80 (not a power of two): Adamas cannot serve it; one line says so, and decoding is dense."""
    model = tiny_models / "gqa2-d80.gguf"
    prompts = load_test.random_prompts(2, 100, load_test.read_n_vocab(model), seed=5)
    out, logs = {}, {}
    for b in (0, 16):
        with start(model, tmp_path, f"tiny{b}", b) as srv:
            out[b] = [load_test.complete(srv.url, p, N_PREDICT)["content"] for p in prompts]
            logs[b] = srv.stop()
    said = [ln for ln in logs[16].splitlines() if "head_dim" in ln]
    assert len(said) == 1, said
    assert "not a power of two" in said[0] and "decodes dense" in said[0], said[0]
    assert not [ln for ln in logs[0].splitlines() if "head_dim" in ln]  # budget 0: nothing to say
    assert out[16] == out[0]
    assert load_test.sparse_steps(logs[16]) == 0
