"""`python -m adamas_gguf eval passkey|ppl ...` and `python -m adamas_gguf bench ...`: the parsers and the
commands. Each command writes PREFIX.md, PREFIX.json and PREFIX.png (-o PREFIX), prints the markdown table
on stdout and its progress on stderr. Errors follow cli.py: one line on stderr, exit 1 (2 for a bad
command line, found before the model is loaded)."""
from __future__ import annotations

import argparse
import datetime
import platform
import shlex
from pathlib import Path

from . import cli
from .cli import UserError, _int_type

DEFAULT_LENGTHS = [1024, 2048, 4096, 7600]
DEFAULT_CTX = [2048, 4096, 7600]
N_BATCH = 512
RULER_ANSWER_ROOM = 128


def _common(p: argparse.ArgumentParser, prefix: str) -> None:
    g = p.add_argument_group("model")
    g.add_argument("model_pos", nargs="?", metavar="MODEL",
                   help="the GGUF model file, or smollm2-135m / gemma3-270m (default: the default model, "
                        "SmolLM2-135M-Instruct)")
    g.add_argument("-m", "--model", dest="model_opt", metavar="FNAME", help="the GGUF model file or name, as MODEL")
    g = p.add_argument_group("output and compute")
    g.add_argument("-o", "--output", default=prefix, metavar="PREFIX",
                   help=f"write PREFIX.md, PREFIX.json and PREFIX.png (default: {prefix}, in the current "
                        "folder); the PNG needs matplotlib (pip install matplotlib)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    g.add_argument("-t", "--threads", type=_int_type(1, 4096), default=None, metavar="N",
                   help="CPU threads (default: llama-cpp-python's)")
    g.add_argument("-ngl", "--n-gpu-layers", type=_int_type(-1), default=cli.N_GPU_LAYERS, metavar="N",
                   help=f"layers on the GPU; -1 = all (default: {cli.N_GPU_LAYERS})")
    g.add_argument("-v", "--verbose", action="store_true", help="show llama.cpp's log on stderr")
    cli.add_adamas_args(p, multi_budget=True)
    p.add_argument("--variant", action="append", default=[], metavar="KEY=VAL[,KEY=VAL...]",
                   help="run this variant of the Adamas flags at every budget (repeatable); keys: "
                        "dense-layers, thr-mode, thr-q, thr-k, thr (both), select, sink, recent (a "
                        "count, or a share of the budget such as 25%%), rerank; e.g. "
                        "--variant thr-mode=rms,thr=0.5,select=head, or --variant select=exact for the "
                        "exact top-budget reference (default: the flags alone)")


def _ruler_tasks() -> tuple:
    from .ruler import TASKS
    return TASKS


def add_parsers(sub) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    ev = sub.add_parser("eval", allow_abbrev=False,
                        help="accuracy against dense attention: passkey, perplexity, RULER-style tasks",
                        description="Evaluate Adamas against dense attention on one model, in one run.")
    evsub = ev.add_subparsers(dest="eval_command", metavar="EVAL", parser_class=cli._Parser)

    p = evsub.add_parser(
        "passkey", allow_abbrev=False, formatter_class=fmt, help="passkey retrieval",
        description="Passkey retrieval, the paper's protocol: filler text, the pass-key line at a depth, the "
                    "question at the end. The prompt is prefilled (dense) except its last --tail-chars "
                    "characters, which are fed token by token (the sparse decode path); then up to 10 greedy "
                    "tokens, found when their first integer is the key. Dense runs too, as the reference.",
        epilog="example:\n  python -m adamas_gguf eval passkey --budget 32 64 128 --lengths 2048 4096 --depths 5")
    _common(p, "passkey")
    p.add_argument("--lengths", type=_int_type(1, None, " tokens"), nargs="+", default=DEFAULT_LENGTHS,
                   metavar="N", help="prompt lengths in tokens (each prompt is the longest that fits) "
                                     f"(default: {' '.join(map(str, DEFAULT_LENGTHS))})")
    p.add_argument("--depths", type=_int_type(1, 1000), default=5, metavar="N",
                   help="depths per length, evenly spread: (i + 0.5) / N (default: 5)")
    p.add_argument("--seed", type=_int_type(0, 2**32 - 1), default=42, metavar="S",
                   help="seed of the pass keys, one per depth (default: 42)")
    p.add_argument("--tail-chars", type=_int_type(1, None, " characters"), default=400, metavar="N",
                   help="the prompt's last N characters are fed token by token (default: 400, the paper's)")

    p = evsub.add_parser(
        "ppl", allow_abbrev=False, formatter_class=fmt, help="perplexity, token by token",
        description="Perplexity of a text with every token after the first fed alone, so that each "
                    "prediction is made by a decode step (the paper's PG-19 protocol). Dense runs too.",
        epilog="example:\n  python -m adamas_gguf eval ppl --text book.txt --max-tokens 4096 --budget 64 256")
    _common(p, "ppl")
    p.add_argument("--text", required=True, metavar="FILE", help="a UTF-8 text file")
    p.add_argument("--max-tokens", type=_int_type(2, None, " tokens"), default=None, metavar="N",
                   help="use the first N tokens of the text (default: all; they must fit the model's context)")

    p = evsub.add_parser(
        "ruler", allow_abbrev=False, formatter_class=fmt, help="RULER-style synthetic long-context tasks",
        description="RULER-style tasks generated offline from the seed (ruler.py): single needles (several "
                    "needle and haystack kinds), multi-key, multi-value and multi-query needles, variable "
                    "tracking, common-words extraction and a question over planted facts, each prompt the "
                    "longest that fits the length. Each is prefilled (dense) except its tail (the question "
                    "and answer prefix, at least --tail-chars characters), fed token by token (the sparse "
                    "decode path), then greedy tokens; scored by the share of the expected items in the "
                    "answer. Dense runs too; add --variant select=exact for the exact top-budget reference.",
        epilog="example:\n  python -m adamas_gguf eval ruler --budget 64 256 --lengths 4096 "
               "--variant select=head --variant select=exact")
    _common(p, "ruler")
    p.add_argument("--lengths", type=_int_type(1, None, " tokens"), nargs="+", default=[4096], metavar="N",
                   help="prompt lengths in tokens (default: 4096)")
    p.add_argument("--tasks", nargs="+", default=["all"], metavar="TASK",
                   help="tasks to run, or all (default: all): " + ", ".join(_ruler_tasks()))
    p.add_argument("--samples", type=_int_type(1, 1000), default=1, metavar="N",
                   help="samples per task and length (default: 1)")
    p.add_argument("--seed", type=_int_type(0, 2**32 - 1), default=42, metavar="S",
                   help="seed of the generated tasks (default: 42)")
    p.add_argument("--tail-chars", type=_int_type(1, None, " characters"), default=400, metavar="N",
                   help="feed at least the prompt's last N characters token by token (default: 400)")

    p = sub.add_parser(
        "bench", allow_abbrev=False, formatter_class=fmt, help="decode tokens/s against context length",
        description="Decode speed, dense and Adamas budgets: per context length a dense prefill, then "
                    "--rounds interleaved rounds of --steps greedy decode steps per setting; the median "
                    "tokens/s of the rounds.",
        epilog="example:\n  python -m adamas_gguf bench --ctx 2048 4096 7600 --budget 64 256 -t 2")
    _common(p, "bench")
    p.add_argument("--ctx", type=_int_type(1, None, " tokens"), nargs="+", default=DEFAULT_CTX, metavar="N",
                   help=f"context lengths (default: {' '.join(map(str, DEFAULT_CTX))})")
    p.add_argument("--steps", type=_int_type(1, 100000), default=32, metavar="N",
                   help="timed decode steps per setting and round (default: 32)")
    p.add_argument("--rounds", type=_int_type(1, 1000), default=3, metavar="N",
                   help="interleaved rounds; the median is reported (default: 3)")


# ------------------------------------------------------------------------------------------------


def _base_params(args, parser):
    from .adamas import AdamasParams
    try:
        return AdamasParams(budget=0, n_dense=args.dense_layers, thr_mode=args.thr_mode, thr_q=args.thr_q,
                            thr_k=args.thr_k, select=args.select, n_sink=args.sink, n_recent=args.recent,
                            rerank=args.rerank)
    except ValueError as e:
        parser.error(str(e))


def _load(path: str, args, n_ctx: int):
    from . import Llama
    from .gguf_check import GGUFError
    kwargs = dict(n_ctx=n_ctx, n_batch=N_BATCH, n_gpu_layers=args.n_gpu_layers, verbose=args.verbose)
    if args.threads is not None:
        kwargs.update(n_threads=args.threads, n_threads_batch=args.threads)
    try:
        return Llama(path, **kwargs)
    except GGUFError as e:
        raise UserError(str(e)) from None
    except (ValueError, RuntimeError, OSError) as e:
        raise UserError(f"{path}: llama.cpp could not load the model ({cli._one_line(e)}){cli._log_reason()}") \
            from None


def _n_ctx_train(path: str) -> int:
    """The model's training context (GGUF metadata), after checking the file."""
    from .gguf_check import GGUFError, check_gguf
    try:
        n = check_gguf(path)["context_length"]
    except GGUFError as e:
        raise UserError(str(e)) from None
    if not n:
        raise UserError(f"{path}: the GGUF does not give the model's context length")
    return n


def _meta(args, path: str, llm, configs) -> dict:
    from ._version import __version__
    return {"command": " ".join(["python -m adamas_gguf", *map(shlex.quote, args.argv)]),
            "model": Path(path).name, "model_path": str(path), "adamas_gguf": __version__,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": platform.machine(), "threads": llm.context_params.n_threads,
            "unavailable_reason": llm.adamas_unavailable_reason,
            "configs": [c.to_json() for c in configs]}


def _write(prefix: str, md: str, data: dict, draw) -> None:
    from . import report
    out = Path(prefix)
    files = [out.with_name(out.name + ".md"), out.with_name(out.name + ".json")]
    try:
        files[0].write_text(md)
        report.write_json(files[1], data)
    except OSError as e:
        raise UserError(f"cannot write {e.filename}: {e.strerror}") from None
    png = out.with_name(out.name + ".png")
    try:
        report.write_png(png, draw)
        files.append(png)
    except report.NoMatplotlib as e:
        cli.print_note(f"no plot: {e}; the .md and .json are written")
    cli._Out().write(md)
    cli.print_info("wrote " + ", ".join(map(str, files)))


def _note_unavailable(llm) -> None:
    reason = llm.adamas_unavailable_reason
    if reason:
        cli.print_note(f"Adamas off for this model: {reason}; every budget decodes dense")


def main(args, parser) -> int:
    from . import evaluate as ev
    command = args.command if args.command == "bench" else getattr(args, "eval_command", None)
    if command is None:
        parser.error("eval needs a kind: passkey, ppl or ruler (see python -m adamas_gguf eval --help)")
    base = _base_params(args, parser)
    if command == "ruler":
        from .ruler import RulerError, parse_tasks
        try:
            args.tasks = parse_tasks(args.tasks)
        except RulerError as e:
            parser.error(str(e))
    try:
        configs = ev.make_configs(base, args.budget, args.variant)
    except ev.EvalError as e:
        parser.error(str(e))
    folder = Path(args.output).parent
    if not folder.is_dir():  # before hours of work, not after
        raise UserError(f"{folder}: no such folder for the output files (-o {args.output})")
    path = cli._model_path(args)
    cli._install_log(args.verbose)
    n_train = _n_ctx_train(path)
    return {"passkey": _passkey, "ppl": _ppl, "ruler": _ruler, "bench": _bench}[command](args, path, n_train, configs)


def _passkey(args, path, n_train, configs) -> int:
    from . import evaluate as ev, report
    lengths = list(dict.fromkeys(args.lengths))
    need = max(lengths) + ev.ANSWER_TOKENS
    if need > n_train:
        raise UserError(f"length {max(lengths)} plus {ev.ANSWER_TOKENS} answer tokens is longer than the "
                        f"model's context ({n_train} tokens)")
    llm = _load(path, args, need)
    try:
        try:  # every length makes a prompt, before any time is spent
            for n in lengths:
                ev.passkey_tokens(lambda s: llm.tokenize(s.encode()), n, 0.5, ev.KEY_RANGE[1])
        except ev.EvalError as e:
            raise UserError(str(e)) from None
        _note_unavailable(llm)
        runner = ev.Runner(llm)
        progress = ev.Progress(len(lengths) * args.depths * len(configs), quiet=args.quiet)
        res = ev.run_passkey(runner, configs, lengths, args.depths, args.seed, args.tail_chars, progress)
        rows = ev.passkey_summary(res["results"], configs, lengths)
        meta = {**_meta(args, path, llm, configs), "lengths": lengths, "n_depths": args.depths, "seed": args.seed,
                "tail_chars": args.tail_chars, "answer_tokens": ev.ANSWER_TOKENS}
    finally:
        llm.close()
    _write(args.output, report.passkey_markdown(rows, lengths, meta),
           {"meta": meta, "rows": rows, "results": res["results"]}, report.passkey_plot(rows, lengths))
    return cli.EXIT_OK


def _ruler(args, path, n_train, configs) -> int:
    from . import evaluate as ev, report, ruler
    lengths = list(dict.fromkeys(args.lengths))
    # the answer tokens follow the prompt: room for the longest expected answer (CWE's ten words)
    if max(lengths) + RULER_ANSWER_ROOM > n_train:
        raise UserError(f"length {max(lengths)} plus {RULER_ANSWER_ROOM} answer tokens is longer than the "
                        f"model's context ({n_train} tokens)")
    llm = _load(path, args, max(lengths) + RULER_ANSWER_ROOM)
    try:
        tok = lambda s: len(llm.tokenize(s.encode("utf-8")))  # noqa: E731
        try:  # every task makes a prompt at the shortest length, before any time is spent
            for t in args.tasks:
                ruler.make_sample(t, tok, min(lengths), args.seed)
        except ruler.RulerError as e:
            raise UserError(str(e)) from None
        _note_unavailable(llm)
        progress = ev.Progress(len(lengths) * len(args.tasks) * args.samples * len(configs), quiet=args.quiet)
        try:
            res = ev.run_ruler(ev.Runner(llm), configs, args.tasks, lengths, args.samples, args.seed,
                               args.tail_chars, progress)
        except ev.EvalError as e:
            raise UserError(str(e)) from None
        rows = ev.ruler_summary(res["results"], configs, args.tasks, lengths)
        meta = {**_meta(args, path, llm, configs), "lengths": lengths, "tasks": args.tasks,
                "n_samples": args.samples, "seed": args.seed, "tail_chars": args.tail_chars}
    finally:
        llm.close()
    _write(args.output, report.ruler_markdown(rows, args.tasks, lengths, meta),
           {"meta": meta, "rows": rows, "results": res["results"]}, report.ruler_plot(rows, args.tasks, lengths))
    return cli.EXIT_OK


def _ppl(args, path, n_train, configs) -> int:
    from . import evaluate as ev, report
    try:
        text = Path(args.text).read_bytes().decode("utf-8")
    except OSError as e:
        raise UserError(f"{args.text}: cannot read the text ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{args.text}: not UTF-8 text (byte {e.start})") from None
    llm = _load(path, args, min(n_train, args.max_tokens or n_train))
    try:
        tokens = llm.tokenize(text.encode("utf-8"))
        if args.max_tokens is not None:
            tokens = tokens[:args.max_tokens]
        if len(tokens) < 2:
            raise UserError(f"{args.text}: the text has {len(tokens)} token(s); perplexity needs at least 2")
        if len(tokens) > n_train:
            raise UserError(f"{args.text}: {len(tokens)} tokens, more than the model's context ({n_train}); "
                            f"use --max-tokens {n_train} or less")
        _note_unavailable(llm)
        runner = ev.Runner(llm)
        progress = ev.Progress(len(configs), quiet=args.quiet)
        res = ev.run_ppl(runner, configs, tokens, progress)
        meta = {**_meta(args, path, llm, configs), "text": Path(args.text).name, "n_tokens": len(tokens)}
    finally:
        llm.close()
    runs = res["runs"]
    _write(args.output, report.ppl_markdown(runs, meta), {"meta": meta, "runs": runs}, report.ppl_plot(runs))
    return cli.EXIT_OK


def _bench(args, path, n_train, configs) -> int:
    from . import bench, evaluate as ev, report
    ctxs = list(dict.fromkeys(args.ctx))
    need = max(ctxs) + args.steps + 2
    if need > n_train:
        raise UserError(f"context {max(ctxs)} plus {args.steps + 1} decode steps is longer than the model's "
                        f"context ({n_train} tokens)")
    llm = _load(path, args, need)
    try:
        _note_unavailable(llm)
        runner = ev.Runner(llm)
        progress = ev.Progress(len(ctxs) * args.rounds, quiet=args.quiet)
        rows = bench.run_bench(runner, configs, ctxs, args.steps, args.rounds, progress)
        meta = {**_meta(args, path, llm, configs), "steps": args.steps, "rounds": args.rounds}
    finally:
        llm.close()
    labels = [c.label for c in configs[1:]]
    _write(args.output, report.bench_markdown(rows, labels, meta), {"meta": meta, "rows": rows},
           report.bench_plot(rows, labels))
    return cli.EXIT_OK
