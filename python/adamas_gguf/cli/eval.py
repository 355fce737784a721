"""`python -m adamas_gguf eval passkey|ppl|ruler ...`: Adamas against dense attention on one model, in one run.
Each writes PREFIX.md, PREFIX.json and PREFIX.png (-o PREFIX; see measure.py); ppl also its per-token
NLLs, PREFIX.nll.json.gz."""
from __future__ import annotations

from pathlib import Path

from . import base, measure
from .base import UserError, int_type

DEFAULT_LENGTHS = [1024, 2048, 4096, 7600]
RULER_ANSWER_ROOM = 128  # the answer tokens after a RULER-style prompt (CWE's ten words)


def add_parser(sub) -> None:
    ev = base.add_command(sub, "eval", help="accuracy against dense attention: passkey, perplexity, RULER-style tasks",
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

    from ..ruler import TASKS
    p = base.add_command(
        evsub, "ruler", help="RULER-style synthetic long-context tasks",
        description="RULER-style tasks generated offline from the seed (ruler.py): single needles (several "
                    "needle and haystack kinds), multi-key, multi-value and multi-query needles, variable "
                    "tracking, common-words extraction and a question over planted facts, each prompt the "
                    "longest that fits the length. Each is prefilled (dense) except its tail (the question "
                    "and answer prefix, at least --tail-chars characters), fed token by token (the sparse "
                    "decode path), then greedy tokens; scored by the share of the expected items in the "
                    "answer. Dense runs too; add --variant select=exact for the exact top-budget reference.",
        epilog="example:\n  python -m adamas_gguf eval ruler --budget 64 256 --lengths 4096 "
               "--variant select=head --variant select=exact")
    measure.add_common_args(p, "ruler")
    p.add_argument("--lengths", type=int_type(1, None, " tokens"), nargs="+", default=[4096], metavar="N",
                   help="prompt lengths in tokens (default: 4096)")
    p.add_argument("--tasks", nargs="+", default=["all"], metavar="TASK",
                   help="tasks to run, or all (default: all): " + ", ".join(TASKS))
    p.add_argument("--samples", type=int_type(1, 1000), default=1, metavar="N",
                   help="samples per task and length (default: 1)")
    p.add_argument("--seed", type=int_type(0, 2**32 - 1), default=42, metavar="S",
                   help="seed of the generated tasks (default: 42)")
    p.add_argument("--tail-chars", type=int_type(1, None, " characters"), default=400, metavar="N",
                   help="feed at least the prompt's last N characters token by token (default: 400)")


# ------------------------------------------------------------------------------------------------


def main(args, parser) -> int:
    command = getattr(args, "eval_command", None)
    if command is None:
        parser.error("eval needs a kind: passkey, ppl or ruler (see python -m adamas_gguf eval --help)")
    if command == "ruler":  # a usage error, before anything is loaded
        from ..ruler import RulerError, parse_tasks
        try:
            args.tasks = parse_tasks(args.tasks)
        except RulerError as e:
            parser.error(str(e))
    path, n_train, configs = measure.prepare(args, parser)
    return {"passkey": _passkey, "ppl": _ppl, "ruler": _ruler}[command](args, path, n_train, configs)


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


def _ruler(args, path, n_train, configs) -> int:
    from .. import evaluate as ev, report, ruler
    lengths = list(dict.fromkeys(args.lengths))
    if max(lengths) + RULER_ANSWER_ROOM > n_train:
        raise UserError(f"length {max(lengths)} plus {RULER_ANSWER_ROOM} answer tokens is longer than the "
                        f"model's context ({n_train} tokens)")
    llm = measure.load(path, args, max(lengths) + RULER_ANSWER_ROOM)
    try:
        def tok(s: str) -> int:
            return len(llm.tokenize(s.encode("utf-8")))
        try:  # every task makes a prompt at the shortest length, before any time is spent
            for t in args.tasks:
                ruler.make_sample(t, tok, min(lengths), args.seed)
        except ruler.RulerError as e:
            raise UserError(str(e)) from None
        measure.note_unavailable(llm)
        progress = ev.Progress(len(lengths) * len(args.tasks) * args.samples * len(configs), quiet=args.quiet)
        try:
            res = ev.run_ruler(ev.Runner(llm), configs, args.tasks, lengths, args.samples, args.seed,
                               args.tail_chars, progress)
        except ev.EvalError as e:
            raise UserError(str(e)) from None
        rows = ev.ruler_summary(res["results"], configs, args.tasks, lengths)
        meta = {**measure.meta(args, path, llm, configs), "lengths": lengths, "tasks": args.tasks,
                "n_samples": args.samples, "seed": args.seed, "tail_chars": args.tail_chars}
    finally:
        llm.close()
    measure.write(args.output, report.ruler_markdown(rows, args.tasks, lengths, meta),
                  {"meta": meta, "rows": rows, "results": res["results"]}, report.ruler_plot(rows, args.tasks, lengths))
    return base.EXIT_OK
