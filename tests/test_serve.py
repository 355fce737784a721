"""`python -m adamas_gguf serve`: llama-cpp-python's OpenAI-compatible server on adamas_gguf.Llama, driven
by the real `openai` client; the answers are checked against the library called directly."""
from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest

from conftest import cli_env, run_cli
from test_cli import assert_one_line_error

PROMPT = "The capital of France is"
LONG_PROMPT = "The history of the city is long and full of stories. " * 12  # ~130 tokens: past budget 64
API_KEY = "test-key-1234"
SAME = {"repeat_penalty": 1.0}  # the server's default is 1.1, the library's 1.0
N_CTX = 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`serve` as a subprocess on a free localhost port; stopped by its own process id."""

    def __init__(self, *args: str, api_key: str | None = None):
        self.port = _free_port()
        self.api_key = api_key
        cmd = [sys.executable, "-m", "adamas_gguf", "serve", "--port", str(self.port), "-c", str(N_CTX), *args]
        if api_key:
            cmd += ["--api-key", api_key]
        self.log = tempfile.TemporaryFile()  # a file, not a pipe: a full pipe would stall the server
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.log,
                                     env=cli_env())
        self.base = f"http://127.0.0.1:{self.port}"
        self._wait()

    def _wait(self, timeout: float = 180) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited with {self.proc.returncode}: {self.stderr()!r}")
            try:
                self.get("/v1/models")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.2)
        self.stop()
        raise AssertionError(f"serve did not answer within {timeout} s")

    def get(self, path: str, key: str | None = None):
        req = urllib.request.Request(self.base + path)
        key = key if key is not None else self.api_key
        if key:
            req.add_header("Authorization", f"Bearer {key}")
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def client(self, key: str | None = None):
        return openai.OpenAI(base_url=self.base + "/v1", api_key=key or self.api_key or "none", max_retries=0,
                             timeout=120)

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self) -> str:
        """Stops it by its process id (SIGTERM: uvicorn shuts down cleanly); returns its stderr."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        err = self.stderr()
        self.log.close()
        return err


@pytest.fixture(scope="module")
def server(default_model):
    s = Server("--budget", "64", api_key=API_KEY)
    yield s
    err = s.stop()
    # uvicorn shuts down, then ends by the signal it caught, as a shell expects
    assert s.proc.returncode in (0, -signal.SIGTERM), err
    assert "Finished server process" in err and "Traceback" not in err, err


@pytest.fixture(scope="module")
def reference(default_model):
    """The library on the same model and context, called directly (budget 64, as the server)."""
    import adamas_gguf
    m = adamas_gguf.Llama(str(default_model), n_ctx=N_CTX, budget=64, verbose=False)
    yield m
    m.close()


def _complete(client, prompt: str, n: int = 8) -> str:
    r = client.completions.create(model="x", prompt=prompt, max_tokens=n, temperature=0, extra_body=SAME)
    return r.choices[0].text


def test_greedy_completion(server, reference):
    text = _complete(server.client(), PROMPT)
    assert text.startswith(" Paris"), text
    assert text == reference.create_completion(PROMPT, max_tokens=8, temperature=0)["choices"][0]["text"]
    models = server.client().models.list()
    assert [m.id for m in models.data] and models.data[0].id.endswith(".gguf")


def test_streamed_chat(server, reference):
    messages = [{"role": "user", "content": "Name three colors."}]
    stream = server.client().chat.completions.create(model="x", messages=messages, max_tokens=24, temperature=0,
                                                     stream=True, extra_body=SAME)
    chunks = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len([c for c in chunks if c]) > 1, chunks  # it did stream, in pieces
    lib = reference.create_chat_completion(messages, max_tokens=24, temperature=0)["choices"][0]["message"]
    assert "".join(chunks) == lib["content"]
    assert "Red" in lib["content"], lib["content"]


def test_sparse_steps_past_the_budget(server):
    before = server.get("/extras/adamas")
    assert before["params"]["budget"] == 64 and before["sparse_layers"] > 0 and not before["unavailable_reason"]
    _complete(server.client(), PROMPT, 4)  # a context inside the budget: dense steps only
    assert server.get("/extras/adamas")["sparse_steps"] == before["sparse_steps"]
    _complete(server.client(), LONG_PROMPT, 8)
    after = server.get("/extras/adamas")["sparse_steps"]
    assert after - before["sparse_steps"] >= 7, (before, after)  # the decode steps after the first token


def test_budget_zero_makes_no_sparse_steps(default_model):
    s = Server("--budget", "0", "--embedding")
    try:
        _complete(s.client(), LONG_PROMPT, 8)
        st = s.get("/extras/adamas")
        assert st["params"]["budget"] == 0 and st["sparse_layers"] == 0 and st["sparse_steps"] == 0, st
        # --embedding: /v1/embeddings gives what llama-cpp-python's Llama gives, called directly
        got = s.client().embeddings.create(model="m", input="The capital of France").data[0].embedding
        import llama_cpp
        ref = llama_cpp.Llama(str(default_model), n_ctx=N_CTX, embedding=True, flash_attn=True, verbose=False)
        want = ref.create_embedding("The capital of France")["data"][0]["embedding"]
        ref.close()
        assert len(got) == len(want) > 0
        flat = lambda v: [x for row in v for x in (row if isinstance(row, list) else [row])]  # noqa: E731
        assert max(abs(a - b) for a, b in zip(flat(got), flat(want))) < 1e-4
    finally:
        s.stop()


def test_concurrent_requests(server):
    prompts = [PROMPT, "The largest planet of the solar system is"]
    alone = [_complete(server.client(), p) for p in prompts]
    got: dict = {}

    def ask(i: int) -> None:
        got[i] = _complete(server.client(), prompts[i])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert [got.get(0), got.get(1)] == alone


def test_api_key_enforced(server):
    with pytest.raises(openai.AuthenticationError):
        server.client(key="wrong-key").completions.create(model="x", prompt=PROMPT, max_tokens=2)
    with pytest.raises(urllib.error.HTTPError) as e:
        server.get("/extras/adamas", key="")
    assert e.value.code == 401
    assert _complete(server.client(), PROMPT, 2)  # the right key works


def test_bad_budget_is_a_usage_error(tmp_path):
    # exit code 2 and not the missing model's error: the flags are checked before anything is loaded
    missing = tmp_path / "missing.gguf"
    msg = assert_one_line_error(run_cli("serve", missing, "--budget", "-1"), 2)
    assert "--budget" in msg and "out of range" in msg
    msg = assert_one_line_error(run_cli("serve", missing, "--budget", "16", "--sink", "17"), 2)
    assert "more than --budget 16" in msg


@pytest.mark.parametrize("case", ["missing", "truncated", "not gguf"])
def test_bad_model_is_one_line(tmp_path, tiny_model, case):
    path = tmp_path / "model.gguf"
    if case == "truncated":
        data = tiny_model.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif case == "not gguf":
        path.write_text("not a model\n")
    msg = assert_one_line_error(run_cli("serve", path, "--port", str(_free_port())), 1)
    assert {"missing": "no such file", "truncated": "truncated GGUF", "not gguf": "not a GGUF file"}[case] in msg


def test_status_reports_the_context(server):
    assert server.get("/extras/adamas")["n_ctx"] == N_CTX


def test_ctx_0_chat_format_and_context_flags(default_model, reference):
    # -c 0: the model's training context; --chat-format: llama-cpp-python's chatml, not the model's template
    # (SmolLM2's adds a system message of its own); -ctk/-ctv/-b: passed to llama.cpp (its log says so)
    import adamas_gguf
    from adamas_gguf.gguf_check import check_gguf
    messages = [{"role": "user", "content": "Who are you?"}]
    chatml = adamas_gguf.Llama(str(default_model), n_ctx=N_CTX, chat_format="chatml", verbose=False)
    try:
        want = chatml.create_chat_completion(messages, max_tokens=24, temperature=0)["choices"][0]["message"]
    finally:
        chatml.close()
    reference.reset()
    own = reference.create_chat_completion(messages, max_tokens=24, temperature=0)["choices"][0]["message"]
    assert want["content"] != own["content"]  # else this test could not tell the formats apart
    s = Server("-c", "0", "--chat-format", "chatml", "-ctk", "q8_0", "-ctv", "q8_0", "-b", "64", "-v")
    try:
        assert s.get("/extras/adamas")["n_ctx"] == check_gguf(str(default_model))["context_length"] == 8192
        r = s.client().chat.completions.create(model="x", messages=messages, max_tokens=24, temperature=0,
                                               extra_body=SAME)
        got = r.choices[0].message.content
    finally:
        err = s.stop()
    assert "K (q8_0)" in err and "V (q8_0)" in err and re.search(r"n_batch += 64\n", err), err[-3000:]
    # the answer of the q8_0 cache: as the library's f16 one for this short greedy reply
    assert got == want["content"]


def test_flash_attn_off_serves_dense(default_model):
    s = Server("--budget", "64", "-fa", "off")
    try:
        st = s.get("/extras/adamas")
        _complete(s.client(), LONG_PROMPT, 4)
        steps = s.get("/extras/adamas")["sparse_steps"]
    finally:
        err = s.stop()
    assert st["params"]["budget"] == 0 and st["sparse_layers"] == 0 and steps == 0, st
    assert "flash attention is off" in st["unavailable_reason"], st
    notes = [ln for ln in err.splitlines() if ln.startswith("adamas_gguf: note:")]
    assert len(notes) == 1 and "Adamas off" in notes[0] and "decoding dense" in notes[0], err
