"""What `eval` and `bench` share: their common flags, the configurations to measure (dense, then each budget
of each --variant), loading the model for a measurement, and the report files: PREFIX.md, PREFIX.json and
PREFIX.png (-o PREFIX), the markdown table also on stdout, progress on stderr."""
from __future__ import annotations

import argparse
import datetime
import platform
import shlex
from pathlib import Path
from typing import Optional

from . import base
from .base import UserError, int_type

N_BATCH = 512


def add_common_args(p: argparse.ArgumentParser, prefix: str) -> None:
    base.add_model_args(p)
    g = p.add_argument_group("output and compute")
    g.add_argument("-o", "--output", default=prefix, metavar="PREFIX",
                   help=f"write PREFIX.md, PREFIX.json and PREFIX.png (default: {prefix}, in the current "
                        "folder); the PNG needs matplotlib (pip install matplotlib)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    g.add_argument("-t", "--threads", type=int_type(1, 4096), default=None, metavar="N",
                   help="CPU threads (default: llama-cpp-python's)")
    g.add_argument("-ngl", "--n-gpu-layers", type=int_type(-1), default=base.N_GPU_LAYERS, metavar="N",
                   help=f"layers on the GPU; -1 = all (default: {base.N_GPU_LAYERS})")
    g.add_argument("-v", "--verbose", action="store_true", help="show llama.cpp's log on stderr")
    base.add_adamas_args(p, multi_budget=True)
    p.add_argument("--variant", action="append", default=[], metavar="KEY=VAL[,KEY=VAL...]",
                   help="run this variant of the Adamas flags at every budget (repeatable); keys: "
                        "dense-layers, thr-mode, thr-q, thr-k, thr (both), select, sink, recent (a "
                        "count, or a share of the budget such as 25%%), rerank; e.g. "
                        "--variant thr-mode=rms,thr=0.5,select=head, or --variant select=exact for the "
                        "exact top-budget reference (default: the flags alone)")


def prepare(args, parser):
    """Checks before any work (usage errors first), then the model: (model path, its training context,
    the configurations: dense first)."""
    from .. import evaluate as ev
    base_params = base.adamas_params(args, parser, budget=0)
    try:
        configs = ev.make_configs(base_params, args.budget, args.variant)
    except ev.EvalError as e:
        parser.error(str(e))
    folder = Path(args.output).parent
    if not folder.is_dir():  # before hours of work, not after
        raise UserError(f"{folder}: no such folder for the output files (-o {args.output})")
    path = base.model_path(args)
    base.install_log(args.verbose)
    return path, n_ctx_train(path), configs


def n_ctx_train(path: str) -> int:
    """The model's training context (GGUF metadata), after checking the file."""
    from ..gguf_check import GGUFError, check_gguf
    try:
        n = check_gguf(path)["context_length"]
    except GGUFError as e:
        raise UserError(str(e)) from None
    if not n:
        raise UserError(f"{path}: the GGUF does not give the model's context length")
    return n


def load(path: str, args, n_ctx: int):
    kwargs = dict(n_ctx=n_ctx, n_batch=N_BATCH, n_gpu_layers=args.n_gpu_layers)
    if args.threads is not None:
        kwargs.update(n_threads=args.threads, n_threads_batch=args.threads)
    return base.load_llama(path, args.verbose, **kwargs)


def note_unavailable(llm) -> None:
    reason = llm.adamas_unavailable_reason
    if reason:
        base.print_note(f"Adamas off for this model: {reason}; every budget decodes dense")


def meta(args, path: str, llm, configs) -> dict:
    """What every report records about its run."""
    from .._version import __version__
    return {"command": " ".join(["python -m adamas_gguf", *map(shlex.quote, args.argv)]),
            "model": Path(path).name, "model_path": str(path), "adamas_gguf": __version__,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": platform.machine(), "threads": llm.context_params.n_threads,
            "unavailable_reason": llm.adamas_unavailable_reason,
            "configs": [c.to_json() for c in configs]}


def write(prefix: str, md: str, data: dict, draw, per_token: Optional[dict] = None) -> None:
    """PREFIX.md, PREFIX.json and (with matplotlib) PREFIX.png; the markdown also on stdout. `per_token`:
    bulky raw data (thousands of numbers a run), kept out of PREFIX.json, in PREFIX.nll.json.gz."""
    from .. import report
    out = Path(prefix)
    files = [out.with_name(out.name + ".md"), out.with_name(out.name + ".json")]
    try:
        files[0].write_text(md)
        report.write_json(files[1], data)
        if per_token is not None:
            files.append(out.with_name(out.name + ".nll.json.gz"))
            report.write_json_gz(files[-1], per_token)
    except OSError as e:
        raise UserError(f"cannot write {e.filename}: {e.strerror}") from None
    png = out.with_name(out.name + ".png")
    try:
        report.write_png(png, draw)
        files.append(png)
    except report.NoMatplotlib as e:
        base.print_note(f"no plot: {e}; the .md and .json are written")
    base.Out().write(md)
    base.print_info("wrote " + ", ".join(map(str, files)))
