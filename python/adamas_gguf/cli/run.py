"""`python -m adamas_gguf run [MODEL.gguf] -p PROMPT ...`: generate text, printed to stdout as it comes.
Flag names follow llama-cli."""
from __future__ import annotations

import argparse
import ctypes

from . import base
from .base import UserError, float_type, int_type, parse_int

# defaults
N_PREDICT, CTX_SIZE, MAX_CTX_SIZE = 128, 4096, 1 << 20
TEMP, TOP_K, TOP_P, MIN_P, REPEAT_PENALTY = 0.8, 40, 0.95, 0.05, 1.0
SEED = 42
RANDOM_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: llama.cpp's sampler then picks a random seed


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


def add_parser(sub) -> None:
    run = base.add_command(
        sub, "run", help="generate text from a prompt",
        description="Generate text from a prompt with a GGUF model and print it to stdout as it is "
                    "generated (the generated text only, not the prompt, then a newline). Flag names "
                    "follow llama-cli.",
        epilog="exit codes: 0 success, 1 error (one line on stderr), 2 bad command line, "
               "130 interrupted (Ctrl-C), 141 stdout closed early.\n\n" + base.env_help())
    base.add_model_args(run)

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
    g.add_argument("-c", "--ctx-size", type=int_type(1, MAX_CTX_SIZE, " tokens"), default=CTX_SIZE,
                   metavar="N", help=f"the context size in tokens: prompt plus generated text "
                                     f"(default: {CTX_SIZE}; at most {MAX_CTX_SIZE})")
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
    g.add_argument("-v", "--verbose", action="store_true",
                   help="show llama.cpp's log on stderr, and the Adamas parameters and sparse step count "
                        "(default: quiet)")

    base.add_adamas_args(run, multi_budget=False)


# ------------------------------------------------------------------------------------------------


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


def _load(path: str, args):
    kwargs = dict(n_ctx=args.ctx_size, n_gpu_layers=args.n_gpu_layers, seed=args.seed, adamas=args.adamas)
    if args.threads is not None:
        kwargs.update(n_threads=args.threads, n_threads_batch=args.threads)
    return base.load_llama(path, args.verbose, **kwargs)


def _too_long(n_prompt: int, n_ctx: int, chat: bool) -> UserError:
    what = "the prompt (formatted with the chat template)" if chat else "the prompt"
    return UserError(f"{what} is {n_prompt} tokens, too long for the context of {n_ctx} tokens "
                     f"(-c {n_ctx}): it must leave room for at least one generated token; raise -c to at "
                     f"least {n_prompt + 1} or shorten the prompt")


def _sampling(args) -> dict:
    return dict(temperature=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                repeat_penalty=args.repeat_penalty)


def _complete(llm, prompt: str, args, out: base.Out) -> None:
    from .._lib import llama_cpp
    n_ctx = base.context_size(llm)
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
    text = base.TextStream()
    n = 0
    for token in llm.generate(tokens, top_k=s["top_k"], top_p=s["top_p"], min_p=s["min_p"],
                              temp=s["temperature"], repeat_penalty=s["repeat_penalty"]):
        if llama_cpp.llama_vocab_is_eog(vocab, token):
            break
        out.write(text.feed(base.token_piece(llama_cpp, vocab, token, buf)))
        n += 1
        if n >= n_max:
            break
    out.write(text.finish())


def _chat(llm, prompt: str, args, out: base.Out) -> None:
    messages = []
    if args.system_prompt is not None:
        messages.append({"role": "system", "content": args.system_prompt})
    messages.append({"role": "user", "content": prompt})
    n_ctx = base.context_size(llm)
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
        base.print_info(f"adamas: {what}")
    reason = llm.adamas_unavailable_reason
    if not params.dense and reason:  # said even when quiet: the user asked for something not done
        base.print_note(f"Adamas off for this model: {reason}; decoding dense")


def main(args, parser) -> int:
    args.adamas = base.adamas_params(args, parser)  # before anything is loaded: a usage error costs nothing
    if args.system_prompt is not None and not args.chat:
        raise UserError("--system-prompt needs --chat")
    prompt = _read_prompt(args)
    path = base.model_path(args)
    base.install_log(args.verbose)
    llm = _load(path, args)
    out = base.Out()
    try:
        _adamas_report(llm, args)
        (_chat if args.chat else _complete)(llm, prompt, args, out)
        out.write("\n")
        if args.verbose:
            base.print_info(f"adamas: {llm.adamas_sparse_steps} sparse decode steps")
    finally:
        llm.close()
    return base.EXIT_OK
