"""`python -m adamas_gguf bench ...`: decode tokens/s against context length, dense and Adamas budgets
(the measurement is adamas_gguf.bench). Writes PREFIX.md, PREFIX.json and PREFIX.png (see measure.py)."""
from __future__ import annotations

from . import base, measure
from .base import UserError, int_type

DEFAULT_CTX = [2048, 4096, 7600]


def add_parser(sub) -> None:
    p = base.add_command(
        sub, "bench", help="decode tokens/s against context length",
        description="Decode speed, dense and Adamas budgets: per context length a dense prefill, then "
                    "--rounds interleaved rounds of --steps greedy decode steps per setting; the median "
                    "tokens/s of the rounds.",
        epilog="example:\n  python -m adamas_gguf bench --ctx 2048 4096 7600 --budget 64 256 -t 2")
    measure.add_common_args(p, "bench")
    p.add_argument("--ctx", type=int_type(1, None, " tokens"), nargs="+", default=DEFAULT_CTX, metavar="N",
                   help=f"context lengths (default: {' '.join(map(str, DEFAULT_CTX))})")
    p.add_argument("--steps", type=int_type(1, 100000), default=32, metavar="N",
                   help="timed decode steps per setting and round (default: 32)")
    p.add_argument("--rounds", type=int_type(1, 1000), default=3, metavar="N",
                   help="interleaved rounds; the median is reported (default: 3)")


def main(args, parser) -> int:
    from .. import bench, evaluate as ev, report
    path, n_train, configs = measure.prepare(args, parser)
    ctxs = list(dict.fromkeys(args.ctx))
    need = max(ctxs) + args.steps + 2
    if need > n_train:
        raise UserError(f"context {max(ctxs)} plus {args.steps + 1} decode steps is longer than the model's "
                        f"context ({n_train} tokens)")
    llm = measure.load(path, args, need)
    try:
        measure.note_unavailable(llm)
        runner = ev.Runner(llm)
        progress = ev.Progress(len(ctxs) * args.rounds, quiet=args.quiet)
        rows = bench.run_bench(runner, configs, ctxs, args.steps, args.rounds, progress)
        meta = {**measure.meta(args, path, llm, configs), "steps": args.steps, "rounds": args.rounds}
    finally:
        llm.close()
    labels = [c.label for c in configs[1:]]
    measure.write(args.output, report.bench_markdown(rows, labels, meta), {"meta": meta, "rows": rows},
                  report.bench_plot(rows, labels))
    return base.EXIT_OK
