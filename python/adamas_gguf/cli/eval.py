"""`python -m adamas_gguf eval passkey|ppl ...`: Adamas against dense attention on one model, in one run.
Each writes PREFIX.md, PREFIX.json and PREFIX.png (-o PREFIX; see measure.py); ppl also its per-token
NLLs, PREFIX.nll.json.gz."""
from __future__ import annotations

from pathlib import Path

from . import base, measure
from .base import UserError, int_type

DEFAULT_LENGTHS = [1024, 2048, 4096, 7600]


def add_parser(sub) -> None:
    ev = base.add_command(sub, "eval", help="accuracy against dense attention: passkey, perplexity",
                          description="Evaluate Adamas against dense attention on one model, in one run.")
    evsub = ev.add_subparsers(dest="eval_command", metavar="EVAL", parser_class=base.Parser)

    p = base.add_command(
        evsub, "passkey", help="passkey retrieval",
        description="Passkey retrieval, the paper's protocol: filler text, the pass-key line at a depth, the "
                    "question at the end. The prompt is prefilled (dense) except its last --tail-chars "
                    "characters, which are fed token by token (the sparse decode path); then up to 10 greedy "
                    "tokens, found when their first integer is the key. Dense runs too, as the reference.",
        epilog="example:\n  python -m adamas_gguf eval passkey --budget 32 64 128 --lengths 2048 4096 --depths 5")
    measure.add_common_args(p, "passkey")
    p.add_argument("--lengths", type=int_type(1, None, " tokens"), nargs="+", default=DEFAULT_LENGTHS,
                   metavar="N", help="prompt lengths in tokens (each prompt is the longest that fits) "
                                     f"(default: {' '.join(map(str, DEFAULT_LENGTHS))})")
    p.add_argument("--depths", type=int_type(1, 1000), default=5, metavar="N",
                   help="depths per length, evenly spread: (i + 0.5) / N (default: 5)")
    p.add_argument("--seed", type=int_type(0, 2**32 - 1), default=42, metavar="S",
                   help="seed of the pass keys, one per depth (default: 42)")
    p.add_argument("--tail-chars", type=int_type(1, None, " characters"), default=400, metavar="N",
                   help="the prompt's last N characters are fed token by token (default: 400, the paper's)")

    p = base.add_command(
        evsub, "ppl", help="perplexity, token by token",
        description="Perplexity of a text with every token after the first fed alone, so that each "
                    "prediction is made by a decode step (the paper's PG-19 protocol). Dense runs too.",
        epilog="example:\n  python -m adamas_gguf eval ppl --text book.txt --max-tokens 4096 --budget 64 256")
    measure.add_common_args(p, "ppl")
    p.add_argument("--text", required=True, metavar="FILE", help="a UTF-8 text file")
    p.add_argument("--max-tokens", type=int_type(2, None, " tokens"), default=None, metavar="N",
                   help="use the first N tokens of the text (default: all; they must fit the model's context)")


# ------------------------------------------------------------------------------------------------


def main(args, parser) -> int:
    command = getattr(args, "eval_command", None)
    if command is None:
        parser.error("eval needs a kind: passkey or ppl (see python -m adamas_gguf eval --help)")
    path, n_train, configs = measure.prepare(args, parser)
    return {"passkey": _passkey, "ppl": _ppl}[command](args, path, n_train, configs)


def _passkey(args, path, n_train, configs) -> int:
    from .. import evaluate as ev, report
    lengths = list(dict.fromkeys(args.lengths))
    need = max(lengths) + ev.ANSWER_TOKENS
    if need > n_train:
        raise UserError(f"length {max(lengths)} plus {ev.ANSWER_TOKENS} answer tokens is longer than the "
                        f"model's context ({n_train} tokens)")
    llm = measure.load(path, args, need)
    try:
        try:  # every length makes a prompt, before any time is spent
            for n in lengths:
                ev.passkey_tokens(lambda s: llm.tokenize(s.encode()), n, 0.5, ev.KEY_RANGE[1])
        except ev.EvalError as e:
            raise UserError(str(e)) from None
        measure.note_unavailable(llm)
        runner = ev.Runner(llm)
        progress = ev.Progress(len(lengths) * args.depths * len(configs), quiet=args.quiet)
        res = ev.run_passkey(runner, configs, lengths, args.depths, args.seed, args.tail_chars, progress)
        rows = ev.passkey_summary(res["results"], configs, lengths)
        meta = {**measure.meta(args, path, llm, configs), "lengths": lengths, "n_depths": args.depths,
                "seed": args.seed, "tail_chars": args.tail_chars, "answer_tokens": ev.ANSWER_TOKENS}
    finally:
        llm.close()
    measure.write(args.output, report.passkey_markdown(rows, lengths, meta),
                  {"meta": meta, "rows": rows, "results": res["results"]}, report.passkey_plot(rows, lengths))
    return base.EXIT_OK


def _ppl(args, path, n_train, configs) -> int:
    from .. import evaluate as ev, report
    try:
        text = Path(args.text).read_bytes().decode("utf-8")
    except OSError as e:
        raise UserError(f"{args.text}: cannot read the text ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{args.text}: not UTF-8 text (byte {e.start})") from None
    llm = measure.load(path, args, min(n_train, args.max_tokens or n_train))
    try:
        tokens = llm.tokenize(text.encode("utf-8"))
        if args.max_tokens is not None:
            tokens = tokens[:args.max_tokens]
        if len(tokens) < 2:
            raise UserError(f"{args.text}: the text has {len(tokens)} token(s); perplexity needs at least 2")
        if len(tokens) > n_train:
            raise UserError(f"{args.text}: {len(tokens)} tokens, more than the model's context ({n_train}); "
                            f"use --max-tokens {n_train} or less")
        measure.note_unavailable(llm)
        runner = ev.Runner(llm)
        progress = ev.Progress(len(configs), quiet=args.quiet)
        res = ev.run_ppl(runner, configs, tokens, progress)
        meta = {**measure.meta(args, path, llm, configs), "text": Path(args.text).name,
                "n_tokens": len(tokens)}
    finally:
        llm.close()
    runs = res["runs"]
    summary, per_token = report.ppl_split(runs)
    measure.write(args.output, report.ppl_markdown(runs, meta), {"meta": meta, "runs": summary},
                  report.ppl_plot(runs), per_token)
    return base.EXIT_OK
