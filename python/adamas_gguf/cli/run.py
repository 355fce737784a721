"""`python -m adamas_gguf run [MODEL.gguf] -p PROMPT ...`: generate text, printed to stdout as it comes.
Flag names follow llama-cli: stdout carries the generated text only; stderr the progress of a long prompt
(on a terminal), the timings at the end, notes and errors. `-cnv` is a chat on stdin, one line a turn, the
history kept in the KV cache."""
from __future__ import annotations

import argparse
import ctypes
import sys
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence

from . import base
from .base import UserError, float_type, int_type, parse_int

# defaults
N_PREDICT, CTX_SIZE, MAX_CTX_SIZE = 128, 4096, 1 << 20
TEMP, TOP_K, TOP_P, MIN_P, REPEAT_PENALTY = 0.8, 40, 0.95, 0.05, 1.0
SEED = 42
RANDOM_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: llama.cpp's sampler then picks a random seed
EXIT_COMMAND = "/exit"


def _n_predict(s: str) -> int:
    v = parse_int(s)
    if v < -1:
        raise argparse.ArgumentTypeError(f"{v} is out of range: must be -1 (until end of text or a full "
                                         "context) or a count >= 0")
    return v


def _seed(s: str) -> int:
    v = parse_int(s)
    if v == -1:
        return RANDOM_SEED
    if not 0 <= v < RANDOM_SEED:
        raise argparse.ArgumentTypeError(f"{v} is out of range: must be -1 (random) or between 0 and "
                                         f"{RANDOM_SEED - 1}")
    return v


def _stop_string(s: str) -> str:
    if not s:
        raise argparse.ArgumentTypeError("a stop string must not be empty")
    return s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def add_parser(sub) -> None:
    run = base.add_command(
        sub, "run", help="generate text from a prompt",
        description="Generate text from a prompt with a GGUF model and print it to stdout as it is "
                    "generated (the generated text only, not the prompt, then a newline). Flag names "
                    "follow llama-cli. On stderr: the progress of the prompt when stderr is a terminal, "
                    "and at the end (after each reply with -cnv) one timings line: prompt tokens and "
                    "tokens/s, generated tokens and tokens/s, and the Adamas sparse decode steps.",
        epilog="examples:\n  python -m adamas_gguf run -p \"The capital of France is\" -n 32 --temp 0\n"
               "  printf 'Hi!\\nName three colors.\\n' | python -m adamas_gguf run -cnv --temp 0\n\n"
               "exit codes: 0 success, 1 error (one line on stderr), 2 bad command line, "
               "130 interrupted (Ctrl-C), 141 stdout closed early.\n\n" + base.env_help())
    base.add_model_args(run)

    g = run.add_argument_group("prompt")
    g.add_argument("-p", "--prompt", metavar="PROMPT",
                   help="the prompt to continue (default: empty: generation starts from the model's "
                        "beginning-of-sequence token); with -cnv, the first user message")
    g.add_argument("-f", "--file", metavar="FNAME",
                   help="read the prompt from this UTF-8 text file instead of -p")
    g.add_argument("--chat", action="store_true",
                   help="chat mode: the prompt is a user message, formatted with the model's chat "
                        "template, and the assistant's reply is printed (default: plain completion)")
    g.add_argument("-cnv", "--conversation", action="store_true",
                   help="conversation: read user messages from stdin, one line each, and print each reply "
                        "(formatted with the model's chat template, as --chat) on its own line; the history "
                        f"stays in the context (its KV cache is reused). Ends at end of input or on a line "
                        f"{EXIT_COMMAND}; empty lines are skipped. With a prompt (-p/-f), that is the first "
                        "message")
    g.add_argument("-sys", "--system-prompt", metavar="PROMPT",
                   help="with --chat or -cnv: a system message to put before the user messages")

    g = run.add_argument_group("generation")
    g.add_argument("-n", "--n-predict", type=_n_predict, default=N_PREDICT, metavar="N",
                   help=f"the number of tokens to generate at most (with -cnv: per reply); generation also "
                        f"stops at the end of text token, at a stop string or when the context is full; "
                        f"-1 = until one of those (default: {N_PREDICT})")
    g.add_argument("-r", "--reverse-prompt", "--stop", dest="stop", action="append", default=[],
                   type=_stop_string, metavar="TEXT",
                   help="a stop string (repeatable): generation ends as soon as the generated text "
                        "contains one; the text from the stop string on is not printed (as "
                        "llama-cpp-python's stop=). With -cnv the reply ends there and the next message "
                        "is read (default: none)")
    g.add_argument("-c", "--ctx-size", type=int_type(0, MAX_CTX_SIZE, " tokens"), default=CTX_SIZE,
                   metavar="N", help=f"the context size in tokens: prompt plus generated text; 0 = the "
                                     f"model's training context (default: {CTX_SIZE}; at most {MAX_CTX_SIZE})")
    g.add_argument("--temp", type=float_type(0.0), default=TEMP, metavar="T",
                   help=f"the sampling temperature; 0 = greedy: always the most likely token "
                        f"(default: {TEMP})")
    g.add_argument("--top-k", type=int_type(0), default=TOP_K, metavar="N",
                   help=f"sample among the N most likely tokens only; 0 = all (default: {TOP_K})")
    g.add_argument("--top-p", type=float_type(0.0, 1.0), default=TOP_P, metavar="P",
                   help=f"nucleus sampling: the smallest set of tokens whose probabilities add up to P; "
                        f"1.0 = off (default: {TOP_P})")
    g.add_argument("--min-p", type=float_type(0.0, 1.0), default=MIN_P, metavar="P",
                   help=f"drop tokens less likely than P times the most likely one; 0.0 = off "
                        f"(default: {MIN_P})")
    g.add_argument("--repeat-penalty", type=float_type(0.0, lo_open=True), default=REPEAT_PENALTY,
                   metavar="X", help=f"penalize repeating recent tokens; 1.0 = off (default: "
                                     f"{REPEAT_PENALTY})")
    g.add_argument("-s", "--seed", type=_seed, default=SEED, metavar="SEED",
                   help=f"the random seed for sampling, so that runs repeat; -1 = a random seed "
                        f"(default: {SEED})")

    g = run.add_argument_group("compute")
    g.add_argument("-t", "--threads", type=int_type(1, 4096), default=None, metavar="N",
                   help="the number of CPU threads (default: llama-cpp-python's: half the CPU cores "
                        "for generation, all of them for the prompt)")
    g.add_argument("-ngl", "--n-gpu-layers", "--gpu-layers", type=int_type(-1), default=base.N_GPU_LAYERS,
                   metavar="N", help=f"the number of layers to put on the GPU; -1 = all; has no effect on "
                                     f"a CPU-only build (default: {base.N_GPU_LAYERS})")
    base.add_context_args(g)
    base.add_device_args(g)
    g.add_argument("--show-timings", action=argparse.BooleanOptionalAction, default=True,
                   help="the timings line on stderr at the end (after each reply with -cnv), as llama-cli; "
                        "--no-show-timings: none (default: shown)")
    g.add_argument("-v", "--verbose", action="store_true",
                   help="show llama.cpp's log on stderr, and the Adamas parameters and sparse step count "
                        "(default: quiet)")

    base.add_adamas_args(run, multi_budget=False)


# ------------------------------------------------------------------------------------------------


def _read_prompt(args) -> Optional[str]:
    """The prompt of -p or -f; None when neither is given."""
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
    if args.prompt is None:
        return None
    # arguments that are not UTF-8 arrive with surrogate escapes; make them text llama.cpp can take
    return args.prompt.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _load(path: str, args, params, context: dict, devices: dict):
    kwargs = dict(n_ctx=args.ctx_size, n_gpu_layers=args.n_gpu_layers, seed=args.seed, adamas=params,
                  **context, **devices)
    if args.threads is not None:
        kwargs.update(n_threads=args.threads, n_threads_batch=args.threads)
    return base.load_llama(path, args.verbose, **kwargs)


def _too_long(n_prompt: int, n_ctx: int, args, chat: bool) -> UserError:
    what = ("the conversation (formatted with the chat template)" if args.conversation else
            "the prompt (formatted with the chat template)" if chat else "the prompt")
    flag = f"-c {args.ctx_size}" + (": the model's training context" if args.ctx_size == 0 else "")
    return UserError(f"{what} is {n_prompt} tokens, too long for the context of {n_ctx} tokens "
                     f"({flag}): it must leave room for at least one generated token; raise -c to at "
                     f"least {n_prompt + 1} or shorten the prompt")


class _Progress:
    """`tokens done/total` of the prompt on stderr, rewritten in place; only on a terminal (a log file or a
    pipe gets nothing), and erased when the prompt is done."""

    def __init__(self, stream=None):
        self.stream = sys.stderr if stream is None else stream
        try:
            self.on = self.stream.isatty()
        except (AttributeError, ValueError):
            self.on = False
        self.shown = False

    def update(self, done: int, total: int) -> None:
        if self.on:
            self.stream.write(f"\r{base.PROG}: prompt: {done}/{total} tokens")
            self.stream.flush()
            self.shown = True

    def done(self) -> None:
        if self.shown:
            self.stream.write("\r\033[K")  # carriage return, erase the line
            self.stream.flush()
            self.shown = False


class _StopText:
    """Stop strings over the generated text: text that could still be the start of a stop string is held
    back; once the text contains one, everything from its first occurrence on is dropped."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in dict.fromkeys(stops) if s]
        self.text = ""
        self.sent = 0
        self.hit = False

    def feed(self, piece: str) -> str:
        """The new text that is safe to print (none once a stop string was found)."""
        if self.hit or not piece:
            return ""
        before = len(self.text)
        self.text += piece
        cut = None
        for s in self.stops:  # any occurrence ends in the new piece: earlier text was searched already
            i = self.text.find(s, max(0, before - len(s) + 1))
            if i >= 0 and (cut is None or i < cut):
                cut = i
        if cut is not None:
            self.hit = True
            self.text = self.text[:cut]
            return self._send(cut)
        hold = 0  # the longest end of the text that a stop string starts with
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.text)), hold, -1):
                if s.startswith(self.text[-k:]):
                    hold = k
                    break
        return self._send(len(self.text) - hold)

    def finish(self) -> str:
        """At the end of generation: the text held back (no stop string came)."""
        return self._send(len(self.text))

    def _send(self, end: int) -> str:
        end = max(end, self.sent)
        out, self.sent = self.text[self.sent:end], end
        return out


@dataclass
class _Turn:
    """What one generation did, for the timings line."""
    text: str = ""
    n_prompt: int = 0  # prompt tokens evaluated
    n_cached: int = 0  # prompt tokens already in the KV cache, reused
    n_gen: int = 0  # tokens generated
    t_prompt: float = 0.0
    t_gen: float = 0.0
    sparse_steps: int = 0

    def line(self) -> str:
        def rate(n: int, t: float) -> str:
            return f"{n / t:.1f} t/s" if n and t > 0 else "- t/s"

        cached = f" (+{self.n_cached} cached)" if self.n_cached else ""
        return (f"timings: prompt {self.n_prompt} tokens{cached} in {self.t_prompt:.2f} s, "
                f"{rate(self.n_prompt, self.t_prompt)} | generated {self.n_gen} tokens in {self.t_gen:.2f} s, "
                f"{rate(self.n_gen, self.t_gen)} | adamas: {self.sparse_steps} sparse decode steps")


def _prefill(llm, tokens: List[int], progress: _Progress) -> int:
    """Evaluates the prompt n_batch tokens at a time (as llama_cpp.Llama.eval does, so the result is the
    same), after the longest prefix already in the KV cache (a conversation's history). The last prompt
    token is always evaluated: its logits pick the first generated token. Returns the tokens reused."""
    from .._lib import llama_cpp
    keep = 0
    if llm.n_tokens > 0:
        for a, b in zip(llm.input_ids[:min(llm.n_tokens, len(tokens) - 1)], tokens):
            if a != b:
                break
            keep += 1
        # a recurrent model's memory cannot drop a suffix: start again (llm.reset() clears its memory)
        if keep == 0 or not llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(llm.ctx), -1, keep, -1):
            keep = 0
            llm.reset()
        else:
            llm.n_tokens = keep  # eval() drops the cache after it
    progress.update(keep, len(tokens))
    for i in range(keep, len(tokens), llm.n_batch):
        llm.eval(tokens[i:i + llm.n_batch])
        progress.update(llm.n_tokens, len(tokens))
    progress.done()
    return keep


def _generate(llm, tokens: List[int], args, out: base.Out, stops: Sequence[str], chat: bool) -> _Turn:
    """Generates after the prompt tokens, printing the text (up to a stop string) as it comes."""
    from .._lib import llama_cpp
    n_ctx = base.context_size(llm)
    if len(tokens) + 1 > n_ctx:
        raise _too_long(len(tokens), n_ctx, args, chat)
    room = n_ctx - len(tokens)
    n_max = room if args.n_predict < 0 else min(args.n_predict, room)
    turn = _Turn()
    if n_max == 0:
        return turn
    steps0 = llm.adamas_sparse_steps
    t0 = time.perf_counter()
    turn.n_cached = _prefill(llm, tokens, _Progress())
    turn.n_prompt = len(tokens) - turn.n_cached
    t1 = time.perf_counter()
    turn.t_prompt = t1 - t0
    llm.set_seed(args.seed)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    buf = ctypes.create_string_buffer(64)
    text = base.TextStream()
    stop = _StopText(stops)
    # the whole prompt is in the KV cache now: generate() samples at once, without evaluating it again
    for token in llm.generate(tokens, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p, temp=args.temp,
                              repeat_penalty=args.repeat_penalty):
        if llama_cpp.llama_vocab_is_eog(vocab, token):
            break
        turn.n_gen += 1
        out.write(stop.feed(text.feed(base.token_piece(llama_cpp, vocab, token, buf))))
        if stop.hit or turn.n_gen >= n_max:
            break
    out.write(stop.feed(text.finish()))
    out.write(stop.finish())
    turn.t_gen = time.perf_counter() - t1
    turn.text = stop.text
    turn.sparse_steps = llm.adamas_sparse_steps - steps0
    return turn


def _prompt_tokens(llm, prompt: str) -> List[int]:
    tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
    if not tokens:  # an empty prompt, and a model that adds no BOS itself
        bos = llm.token_bos()
        if bos < 0:
            raise UserError("the prompt is empty and the model has no beginning-of-sequence token to "
                            "start from; give a prompt with -p")
        tokens = [bos]
    return tokens


class _Formatted(Exception):
    def __init__(self, tokens, stop):
        super().__init__("formatted")
        self.tokens, self.stop = tokens, stop


def _chat_prompt(llm, messages: list):
    """The messages formatted by llama-cpp-python's chat handler for this model (its chat template), as
    the tokens it would generate after and its stop strings: the handler's call to create_completion is
    caught before anything is evaluated."""
    def capture(prompt, *a, **kw):
        raise _Formatted(prompt, kw.get("stop"))

    llm.create_completion = capture
    try:
        llm.create_chat_completion(messages, max_tokens=1)
    except _Formatted as f:
        tokens = f.tokens if isinstance(f.tokens, list) else _prompt_tokens(llm, f.tokens)
        stop = [] if f.stop is None else [f.stop] if isinstance(f.stop, str) else list(f.stop)
        return tokens, stop
    finally:
        del llm.create_completion
    raise UserError("the chat handler did not format the messages into a prompt")  # not expected


def _timings(turn: _Turn, args) -> None:
    if args.show_timings:
        base.print_info(turn.line())


def _conversation(llm, first: Optional[str], args, out: base.Out, messages: list) -> None:
    interactive = sys.stdin is not None and sys.stdin.isatty()
    pending = [first] if first else []
    while True:
        if pending:
            line = pending.pop()
        else:
            if interactive:
                sys.stderr.write("> ")
                sys.stderr.flush()
            raw = sys.stdin.buffer.readline() if sys.stdin is not None else b""
            if not raw:  # end of input
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if line.strip() == EXIT_COMMAND:
            return
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        tokens, stops = _chat_prompt(llm, messages)
        turn = _generate(llm, tokens, args, out, args.stop + stops, chat=True)
        out.write("\n")
        messages.append({"role": "assistant", "content": turn.text})
        _timings(turn, args)


def _adamas_report(llm, params, args, flash_off: bool) -> None:
    if args.verbose:
        loaded = llm.adamas
        what = "off (budget 0: dense attention)" if loaded.dense else \
            f"{loaded} (sparse layers: {llm.adamas_n_sparse_layers})"
        base.print_info(f"adamas: {what}")
    reason = llm.adamas_unavailable_reason
    # said even when quiet: the user asked for something not done
    if flash_off:
        base.note_flash_attn_off(params, reason)
    elif not params.dense and reason:
        base.print_note(f"Adamas off for this model: {reason}; decoding dense")
    elif not params.dense and llm.adamas_refused_layers:  # layers split over devices, some without Adamas
        off = llm.adamas_refused_layers
        base.print_note(f"Adamas off for layer{'s' if len(off) > 1 else ''} {', '.join(map(str, off))}: "
                        f"{next(iter(off.values()))}; they decode dense, {llm.adamas_n_sparse_layers} "
                        f"layer{'s' if llm.adamas_n_sparse_layers != 1 else ''} sparse")


def main(args, parser) -> int:
    params = base.adamas_params(args, parser)  # before anything is loaded: a usage error costs nothing
    context = base.context_kwargs(args, parser)
    devices = base.device_kwargs(args)
    load_params, flash_off = base.dense_without_flash_attn(params, context)
    chat = args.chat or args.conversation
    if args.system_prompt is not None and not chat:
        raise UserError("--system-prompt needs --chat or -cnv")
    prompt = _read_prompt(args)
    path = base.model_path(args)
    base.install_log(args.verbose)
    llm = _load(path, args, load_params, context, devices)
    out = base.Out()
    try:
        _adamas_report(llm, params, args, flash_off)
        messages = [] if args.system_prompt is None else [{"role": "system", "content": args.system_prompt}]
        if args.conversation:
            _conversation(llm, prompt, args, out, messages)
        else:
            if chat:
                tokens, stops = _chat_prompt(llm, messages + [{"role": "user", "content": prompt or ""}])
            else:
                tokens, stops = _prompt_tokens(llm, prompt or ""), []
            turn = _generate(llm, tokens, args, out, args.stop + stops, chat)
            out.write("\n")
            _timings(turn, args)
        if args.verbose:
            base.print_info(f"adamas: {llm.adamas_sparse_steps} sparse decode steps")
    finally:
        llm.close()
    return base.EXIT_OK
