"""`python -m adamas_gguf serve [MODEL.gguf]`: an OpenAI-compatible HTTP server (llama-cpp-python's, see
adamas_gguf/server.py) on one model, with the Adamas flags of `run`."""
from __future__ import annotations

from . import base
from .base import UserError, int_type

HOST, PORT, CTX_SIZE, MAX_CTX_SIZE = "127.0.0.1", 8000, 4096, 1 << 20
EXTRA_HINT = 'pip install "adamas_gguf[server]"'


def add_parser(sub) -> None:
    p = base.add_command(
        sub, "serve", help="an OpenAI-compatible HTTP server (llama-cpp-python's)",
        description="Serve a GGUF model over HTTP with llama-cpp-python's OpenAI-compatible server: "
                    "/v1/completions, /v1/chat/completions (streaming too, with the model's chat template), "
                    "/v1/models, /v1/embeddings, /extras/tokenize..., and GET /extras/adamas: the Adamas "
                    "parameters, the sparse layers and the sparse decode steps so far. API docs at /docs. "
                    f"Needs the server extra: {EXTRA_HINT}. Stop it with Ctrl-C.",
        epilog="example:\n  python -m adamas_gguf serve --budget 64 --port 8080\n"
               "  curl http://127.0.0.1:8080/v1/completions -H 'Content-Type: application/json' "
               "-d '{\"prompt\": \"The capital of France is\", \"max_tokens\": 8}'\n\n" + base.env_help())
    base.add_model_args(p)
    g = p.add_argument_group("server")
    g.add_argument("--host", default=HOST, metavar="ADDR",
                   help=f"the address to listen on (default: {HOST}, this machine only)")
    g.add_argument("--port", type=int_type(1, 65535), default=PORT, metavar="N",
                   help=f"the TCP port to listen on (default: {PORT})")
    g.add_argument("--api-key", metavar="KEY",
                   help="require this key from clients (Authorization: Bearer KEY) (default: none required)")
    g.add_argument("--chat-format", metavar="NAME",
                   help="llama-cpp-python's chat format for /v1/chat/completions, e.g. chatml, llama-3, or "
                        "chat_template.NAME for one of the model's templates (default: the model's chat "
                        "template)")
    g.add_argument("--embedding", "--embeddings", action="store_true",
                   help="also answer /v1/embeddings (the model's output embeddings, pooled as its GGUF says; "
                        "for a causal model one vector per token); without it that route answers with an "
                        "error, as llama-cpp-python's server does (default: off)")
    g = p.add_argument_group("compute")
    g.add_argument("-c", "--ctx-size", type=int_type(0, MAX_CTX_SIZE, " tokens"), default=CTX_SIZE,
                   metavar="N", help=f"the context size in tokens, prompt plus answer; 0 = the model's "
                                     f"training context (default: {CTX_SIZE})")
    g.add_argument("-t", "--threads", type=int_type(1, 4096), default=None, metavar="N",
                   help="the number of CPU threads (default: llama-cpp-python's: half the CPU cores "
                        "for generation, all of them for the prompt)")
    g.add_argument("-ngl", "--n-gpu-layers", type=int_type(-1), default=base.N_GPU_LAYERS, metavar="N",
                   help=f"the number of layers to put on the GPU; -1 = all (default: {base.N_GPU_LAYERS})")
    base.add_context_args(g)
    base.add_device_args(g)
    g.add_argument("-v", "--verbose", action="store_true",
                   help="show llama.cpp's log on stderr (default: the server's request log only)")
    base.add_adamas_args(p, multi_budget=False)


def _check_chat_format(name, parser) -> None:
    if name is None or name.startswith("chat_template."):  # the model's own: checked once it is loaded
        return
    from llama_cpp import llama_chat_format
    try:
        llama_chat_format.get_chat_completion_handler(name)
    except llama_chat_format.LlamaChatCompletionHandlerNotFoundException as e:  # it lists the known ones
        parser.error(f"--chat-format: {e}, or chat_template.NAME for one of the model's templates")


def main(args, parser) -> int:
    asked = base.adamas_params(args, parser)  # usage errors first, before anything is loaded
    context = base.context_kwargs(args, parser)
    devices = base.device_kwargs(args)
    params, flash_off = base.dense_without_flash_attn(asked, context)
    try:
        import uvicorn
        from .. import server
    except ImportError as e:
        raise UserError(f"serve needs llama-cpp-python's server packages ({e.name} is missing): "
                        f"{EXTRA_HINT}") from None
    _check_chat_format(args.chat_format, parser)
    path = base.model_path(args)
    base.install_log(args.verbose)
    kwargs = dict(model=path, n_ctx=args.ctx_size, n_gpu_layers=args.n_gpu_layers, chat_format=args.chat_format,
                  embedding=args.embedding, verbose=args.verbose, **context, **devices,
                  **{k: getattr(params, k) for k in server.ADAMAS_KEYWORDS})
    if "rpc_servers" in kwargs:  # ModelSettings takes them as one string
        kwargs["rpc_servers"] = ",".join(kwargs["rpc_servers"])
    if args.threads is not None:
        kwargs.update(n_threads=args.threads, n_threads_batch=args.threads)
    try:
        model_settings = server.AdamasModelSettings(**kwargs)
        server_settings = server.AdamasServerSettings(host=args.host, port=args.port, api_key=args.api_key)
    except ValueError as e:  # pydantic's ValidationError: the flags were checked, so not expected
        raise UserError(base.one_line(e)) from None
    from ..gguf_check import GGUFError
    from .. import rpc
    try:
        app = server.create_app(server_settings, model_settings)
    except (GGUFError, rpc.RPCError) as e:
        raise UserError(str(e)) from None
    except (ValueError, RuntimeError, OSError) as e:
        hint = "" if args.verbose else "; run with --verbose to see llama.cpp's log"
        raise UserError(f"{path}: llama.cpp could not load the model ({base.one_line(e)}){base.log_reason()}"
                        f"{hint}") from None
    if flash_off:  # the server's GET /extras/adamas gives the library's reason too
        base.note_flash_attn_off(asked, None)
    what = "dense attention (budget 0)" if params.dense else f"Adamas {params}"
    base.print_info(f"serving {path} with {what} on http://{args.host}:{args.port}/v1")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return base.EXIT_OK
