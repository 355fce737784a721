"""`python -m adamas_gguf run`: what users of llama-cli expect (issue 17 item 4): prompt progress on a terminal,
the timings line, the conversation mode, stop strings, -c 0 and the llama.cpp context flags; each checked
against the library (or llama_cpp) called directly."""
from __future__ import annotations

import os
import pty
import re
import subprocess
import sys

import pytest

import adamas_gguf
from adamas_gguf.gguf_check import check_gguf

from conftest import N_CTX, cli_env, run_cli
from test_cli import PROMPT, assert_ok, assert_one_line_error, timings, without_timings

LONG_PROMPT = "The history of the city is long and full of stories. " * 12  # ~145 tokens: past budget 64
MID_PROMPT = "The history of the city is long and full of stories. " * 3  # 37 tokens: 5 batches of 8


def _greedy(llm, prompt: str, n: int, **kw) -> dict:
    llm.reset()  # a fresh evaluation, not a prefix of an earlier call's cache
    return llm.create_completion(prompt, max_tokens=n, temperature=0, **kw)


def _run_with_input(*args: str, input: str) -> subprocess.CompletedProcess:
    """run_cli, with `input` on stdin (a pipe, not a terminal)."""
    return subprocess.run([sys.executable, "-m", "adamas_gguf", *map(str, args)], input=input,
                          capture_output=True, text=True, encoding="utf-8", env=cli_env(), timeout=300)


def _chat(llm, messages: list, n: int) -> str:
    llm.reset()
    return llm.create_chat_completion(messages, max_tokens=n, temperature=0)["choices"][0]["message"]["content"]


# ------------------------------------------------------------------------------------------------
# stop strings


def test_stop_strings_cut_the_greedy_output(llm, default_model):
    full = _greedy(llm, PROMPT, 24)["choices"][0]["text"]
    words = full.split()
    assert len(words) >= 4, full
    late, early = words[3], words[1]  # the first given is found later: the earliest occurrence counts
    cut = min(full.index(late), full.index(early))
    want = full[:cut]
    args = ("run", "-p", PROMPT, "-n", "24", "--temp", "0", "-c", N_CTX)
    assert assert_ok(run_cli(*args, "--stop", late, "-r", early)) == want + "\n"
    # llama-cpp-python's stop= gives the same text
    assert _greedy(llm, PROMPT, 24, stop=[late, early])["choices"][0]["text"] == want
    # text held back as a possible start of a stop string is printed when no stop string comes
    assert assert_ok(run_cli(*args, "--stop", full[-2:] + "\x01never")) == full + "\n"


# ------------------------------------------------------------------------------------------------
# timings and progress


def test_timings_line_counts(llm, default_model):
    ref = _greedy(llm, PROMPT, 16)
    r = run_cli("run", "-p", PROMPT, "-n", "16", "--temp", "0", "-c", N_CTX)
    assert assert_ok(r) == ref["choices"][0]["text"] + "\n"  # stdout: the text only
    assert timings(r.stderr) == [(ref["usage"]["prompt_tokens"], 0, ref["usage"]["completion_tokens"], 0)]
    assert ref["usage"]["completion_tokens"] == 16
    r = run_cli("run", "-p", PROMPT, "-n", "16", "--temp", "0", "-c", N_CTX, "--no-show-timings")
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_timings_count_sparse_steps(default_model):
    r = run_cli("run", "-p", LONG_PROMPT, "-n", "8", "--temp", "0", "-c", N_CTX, "--budget", "64")
    assert_ok(r)
    (n_prompt, _, n_gen, steps), = timings(r.stderr)
    assert n_prompt > 64 and n_gen == 8
    assert steps == n_gen - 1  # each token after the first is one decode step, sparse past the budget


def _run_on_pty(*args: str):
    """run with stderr on a terminal (a pty) and stdout on a pipe: (stdout, what the terminal got)."""
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "adamas_gguf", *map(str, args)], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=slave, env=cli_env())
    os.close(slave)
    try:
        out = p.stdout.read()
        term = b""
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            term += data
        assert p.wait(timeout=120) == 0, term
    finally:
        p.kill()
        os.close(master)
    return out.decode(), term.decode()


def test_progress_on_a_terminal_only(llm, default_model):
    args = ("run", "-p", MID_PROMPT, "-n", "8", "--temp", "0", "-c", N_CTX, "-b", "8")
    piped = run_cli(*args)
    assert_ok(piped)
    assert "prompt:" not in piped.stderr
    out, term = _run_on_pty(*args)
    n = len(llm.tokenize(MID_PROMPT.encode(), add_bos=True, special=True))
    steps = re.findall(r"\radamas_gguf: prompt: (\d+)/(\d+) tokens", term)
    assert steps == [(str(k), str(n)) for k in [0, *range(8, n, 8), n]], term
    assert "\r\x1b[K" in term  # the progress line is erased before the text and the timings
    assert out == piped.stdout


def test_batch_size_equals_the_library(default_model):
    # the prompt evaluated 8 tokens at a time (the progress steps): as the library with n_batch=8
    ref = adamas_gguf.Llama(str(default_model), n_ctx=N_CTX, n_batch=8, n_ubatch=4, verbose=False)
    try:
        want = _greedy(ref, MID_PROMPT, 12)["choices"][0]["text"]
    finally:
        ref.close()
    r = run_cli("run", "-p", MID_PROMPT, "-n", "12", "--temp", "0", "-c", N_CTX, "-b", "8", "-ub", "4", "-v")
    assert r.returncode == 0 and r.stdout == want + "\n", r.stderr[-2000:]
    assert re.search(r"n_batch += 8\n", r.stderr) and re.search(r"n_ubatch += 4\n", r.stderr)


# ------------------------------------------------------------------------------------------------
# conversation


def test_conversation_equals_fresh_chats(llm, default_model):
    system = "You are a helpful assistant. Answer briefly."
    q1, q2 = "Hi! Who are you?", "Name three colors."
    r = _run_with_input("run", "-cnv", "-sys", system, "--temp", "0", "-n", "32", "-c", N_CTX,
                        input=f"{q1}\n\n{q2}\n")  # the empty line is skipped
    history = [{"role": "system", "content": system}, {"role": "user", "content": q1}]
    a1 = _chat(llm, history, 32)
    history += [{"role": "assistant", "content": a1}, {"role": "user", "content": q2}]
    a2 = _chat(llm, history, 32)  # the second reply from scratch, with the whole history
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{a1}\n{a2}\n"
    assert without_timings(r.stderr) == ""
    (p1, c1, _, _), (p2, c2, _, _) = timings(r.stderr)
    assert c1 == 0 and c2 > p1 and p2 < c2  # the second turn reuses the first turn's KV cache


def test_conversation_ends_on_exit(tiny_model):
    r = _run_with_input("run", tiny_model, "-cnv", "-n", "4", "--temp", "0", input="hello\n/exit\nmore\n")
    assert r.returncode == 0 and r.stdout.count("\n") >= 1, r.stderr
    assert len(timings(r.stderr)) == 1  # one reply, then /exit
    r = _run_with_input("run", tiny_model, "-cnv", "-p", "hi", "-n", "4", "--temp", "0", input="")
    assert r.returncode == 0 and len(timings(r.stderr)) == 1, r.stderr  # -p is the first message, then EOF


# ------------------------------------------------------------------------------------------------
# -c 0 and the llama.cpp context flags


def test_ctx_0_is_the_training_context(default_model, tiny_model, tmp_path):
    n_train = check_gguf(str(default_model))["context_length"]
    assert n_train == 8192
    r = run_cli("run", "-p", "hi", "-n", "1", "-c", "0", "-v")
    assert r.returncode == 0, r.stderr[-2000:]
    assert re.search(rf"llama_context: n_ctx += {n_train}\n", r.stderr), r.stderr[-4000:]
    # a prompt past it: the clear error, naming the context and -c 0
    tiny_train = check_gguf(str(tiny_model))["context_length"]
    f = tmp_path / "long.txt"
    f.write_text("hello world " * (tiny_train // 2 + 50))
    msg = assert_one_line_error(run_cli("run", tiny_model, "-f", f, "-c", "0"), 1)
    assert re.search(rf"prompt is \d+ tokens, too long for the context of {tiny_train} tokens \(-c 0: the "
                     r"model's training context\)", msg), msg


def test_cache_types_equal_llama_cpp(default_model):
    import llama_cpp
    ref = llama_cpp.Llama(str(default_model), n_ctx=N_CTX, type_k=llama_cpp.GGML_TYPE_Q8_0,
                          type_v=llama_cpp.GGML_TYPE_Q8_0, flash_attn=True, verbose=False)
    try:
        want = _greedy(ref, PROMPT, 16)["choices"][0]["text"]
    finally:
        ref.close()
    r = run_cli("run", "-p", PROMPT, "-n", "16", "--temp", "0", "-c", N_CTX, "-ctk", "q8_0", "-ctv", "q8_0",
                "--budget", "0", "-v")
    assert r.returncode == 0 and r.stdout == want + "\n", r.stderr[-2000:]
    assert "K (q8_0)" in r.stderr and "V (q8_0)" in r.stderr
    # and with Adamas: sparse steps on the q8_0 cache
    r = run_cli("run", "-p", LONG_PROMPT, "-n", "4", "--temp", "0", "-c", N_CTX, "-ctk", "q8_0", "-ctv", "q8_0",
                "--budget", "64")
    assert_ok(r)
    assert timings(r.stderr)[0][3] == 3


def test_flash_attn_off_says_adamas_is_off(default_model):
    ref = adamas_gguf.Llama(str(default_model), n_ctx=N_CTX, flash_attn=False, verbose=False)
    try:
        want = _greedy(ref, LONG_PROMPT, 8)["choices"][0]["text"]
    finally:
        ref.close()
    r = run_cli("run", "-p", LONG_PROMPT, "-n", "8", "--temp", "0", "-c", N_CTX, "-fa", "off", "--budget", "64")
    assert r.returncode == 0 and r.stdout == want + "\n", r.stderr
    notes = without_timings(r.stderr).splitlines()
    assert len(notes) == 1, r.stderr
    assert re.fullmatch(r"adamas_gguf: note: Adamas off: .*flash attention is off.*; decoding dense \(--budget 64 "
                        r"needs flash attention, and -fa is off\)", notes[0]), notes
    assert timings(r.stderr)[0][3] == 0


def test_no_mmap(tiny_model):
    mapped = run_cli("run", tiny_model, "-p", "hi", "-n", "1", "-v")
    read = run_cli("run", tiny_model, "-p", "hi", "-n", "1", "-v", "--no-mmap")
    assert mapped.returncode == 0 and read.returncode == 0, read.stderr[-2000:]
    assert "CPU_Mapped model buffer" in mapped.stderr and "CPU_Mapped" not in read.stderr
    assert read.stdout == mapped.stdout


CONTEXT_FLAG_ERRORS = [
    (["-ctk", "foo"], "argument -ctk/--cache-type-k: unknown cache type 'foo': must be one of f32, f16, bf16, "
                      "q8_0, q4_0, q4_1, iq4_nl, q5_0, q5_1"),
    (["-ctv", "q3_k"], "argument -ctv/--cache-type-v: unknown cache type 'q3_k'"),
    (["-fa", "yes"], "argument -fa/--flash-attn: 'yes' is not on, off or auto"),
    (["-ctv", "q8_0", "-fa", "off"], "-ctv q8_0: a quantized V cache needs flash attention"),
    (["-b", "0"], "argument -b/--batch-size: 0 is out of range"),
    (["-ub", "x"], "argument -ub/--ubatch-size: invalid integer 'x'"),
    (["-c", "-1"], "argument -c/--ctx-size: -1 is out of range"),
]
RUN_FLAG_ERRORS = [(["--stop", ""], "argument -r/--reverse-prompt/--stop: a stop string must not be empty")]


@pytest.mark.parametrize("command, flags, words", [("run", f, w) for f, w in CONTEXT_FLAG_ERRORS + RUN_FLAG_ERRORS]
                         + [("serve", f, w) for f, w in CONTEXT_FLAG_ERRORS])
def test_bad_context_flag_is_a_usage_error(tmp_path, command, flags, words):
    # the model does not exist: an error about the flag, not the file, shows that nothing was loaded
    msg = assert_one_line_error(run_cli(command, tmp_path / "missing.gguf", *flags), 2)
    assert words in msg, msg


def test_flag_tables():
    from adamas_gguf._lib import llama_cpp
    from adamas_gguf.cli import base
    # ggml's type numbers, where llama_cpp names them (it has no GGML_TYPE_BF16: ggml.h gives 30)
    for name, value in base.CACHE_TYPES.items():
        assert getattr(llama_cpp, f"GGML_TYPE_{name.upper()}", value) == value, name
    assert base.CACHE_TYPES["bf16"] == 30
    assert [base.flash_attn(s) for s in ("on", "enabled", "1", "off", "false", "0", "auto", "-1")] == \
        ["on"] * 3 + ["off"] * 3 + ["auto"] * 2
