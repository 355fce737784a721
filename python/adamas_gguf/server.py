"""An OpenAI-compatible HTTP server for adamas_gguf.Llama: llama-cpp-python's own (`llama_cpp.server`,
FastAPI and uvicorn) with its routes, settings and model proxy, serving our Llama. Needs the `server` extra
(pip install "adamas_gguf[server]"); `python -m adamas_gguf serve` runs it from the command line.

    from adamas_gguf.server import AdamasModelSettings, AdamasServerSettings, create_app
    app = create_app(AdamasServerSettings(), AdamasModelSettings(model="model.gguf", budget=64))
    uvicorn.run(app, host="127.0.0.1", port=8000)

What differs from upstream's server: the model settings add the Adamas fields (those of AdamasParams) and
turn flash attention on (the sparse decode path needs it); settings come only from what the caller passes,
never from environment variables; requests are not interrupted by later ones (upstream's default cuts a
streaming answer short when another request arrives); and one more route, GET /extras/adamas, reports the
context size, the Adamas parameters, the sparse layers, the sparse decode steps run so far and the rpc-servers'
devices (serve --rpc).
"""
from __future__ import annotations

import os
from typing import List, Literal, Optional

from fastapi import APIRouter, Depends
from llama_cpp.server import app as upstream_app
from llama_cpp.server.model import LlamaProxy
from llama_cpp.server.settings import ModelSettings, ServerSettings
from pydantic import BaseModel, Field, model_validator

from .adamas import AdamasParams
from .gguf_check import check_gguf
from .llama import ADAMAS_KEYWORDS, Llama

__all__ = ["AdamasModelSettings", "AdamasServerSettings", "AdamasLlamaProxy", "AdamasStatus", "create_app",
           "ADAMAS_ROUTE"]

ADAMAS_ROUTE = "/extras/adamas"
_D = AdamasParams  # class attributes: the defaults


class _FromArgumentsOnly:
    """pydantic-settings reads fields from environment variables (MODEL, N_CTX, PORT...) by default: here
    settings are what the caller passes, nothing else."""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        return (init_settings,)


# ModelSettings fields that upstream's proxy turns into objects (multimodal chat handlers, Hugging Face
# tokenizers and downloads, draft models, caches, key-value overrides): not served here, and refused
# rather than ignored.
_UNSUPPORTED = ("clip_model_path", "hf_tokenizer_config_path", "hf_pretrained_model_name_or_path",
                "hf_model_repo_id", "draft_model", "kv_overrides", "chat_template_kwargs", "lora_base")


class AdamasModelSettings(_FromArgumentsOnly, ModelSettings):
    """llama-cpp-python's ModelSettings, plus the Adamas parameters (see AdamasParams)."""

    flash_attn: bool = Field(default=True, description="Flash attention; Adamas (budget > 0) needs it.")
    logits_all: bool = Field(default=False, description="Keep the logits of every prompt token (completion "
                                                        "logprobs need it; it costs n_ctx x vocabulary floats).")
    verbose: bool = Field(default=False, description="llama-cpp-python's messages on stderr.")
    budget: int = Field(default=_D.budget, ge=0, description="Tokens attended per head in a sparse decode "
                                                              "step; 0 = dense attention, Adamas off.")
    n_dense: int = Field(default=_D.n_dense, ge=0, description="The first n_dense full-attention layers stay dense (sliding-window layers do not count).")
    thr_mode: Literal["rms", "fixed"] = Field(default=_D.thr_mode, description="Bucket thresholds of the "
                                              "2-bit codes: rms (times each vector's RMS) or fixed.")
    thr_q: float = Field(default=_D.thr_q, gt=0, description="Threshold (or RMS factor) for queries.")
    thr_k: float = Field(default=_D.thr_k, gt=0, description="Threshold (or RMS factor) for keys.")
    select: Literal["group", "head", "exact"] = Field(default=_D.select, description="Token selection per "
                                                      "KV head (group), per query head (head), or exact.")
    n_sink: int = Field(default=_D.n_sink, ge=0, description="First tokens always attended, in the budget.")
    n_recent: int = Field(default=_D.n_recent, ge=-1, description="Recent tokens always attended, in the "
                                                                   "budget; -1 = auto, min(16, budget/4).")
    rerank: int = Field(default=_D.rerank, ge=1, description="Rerank a pool of rerank x budget tokens by "
                                                             "exact q.k; 1 = off.")

    @model_validator(mode="after")
    def _check(self) -> "AdamasModelSettings":
        self.adamas  # the library's checks: a bad combination fails here, before any model is loaded
        if self.budget > 0 and not self.flash_attn:
            raise ValueError(f"Adamas (budget={self.budget}) needs flash attention: set flash_attn=True or "
                             "budget=0")
        for name in _UNSUPPORTED:
            if getattr(self, name) is not None:
                raise ValueError(f"{name} is not supported by the adamas_gguf server")
        if self.cache:
            raise ValueError("cache is not supported by the adamas_gguf server")
        return self

    @property
    def adamas(self) -> AdamasParams:
        return AdamasParams(**{k: getattr(self, k) for k in ADAMAS_KEYWORDS})


class AdamasServerSettings(_FromArgumentsOnly, ServerSettings):
    """llama-cpp-python's ServerSettings; local by default, and a request never cuts another short."""

    host: str = Field(default="127.0.0.1", description="Listen address")
    interrupt_requests: bool = Field(default=False, description="Whether a new request interrupts a "
                                                                "streaming one.")


# the ModelSettings fields that are Llama's keyword arguments of the same name
_LLAMA_FIELDS = ("n_gpu_layers", "split_mode", "main_gpu", "tensor_split", "vocab_only", "use_mmap",
                 "use_mlock", "rpc_servers", "seed", "n_ctx", "n_batch", "n_ubatch", "n_threads",
                 "n_threads_batch", "rope_scaling_type", "rope_freq_base", "rope_freq_scale", "yarn_ext_factor",
                 "yarn_attn_factor", "yarn_beta_fast", "yarn_beta_slow", "yarn_orig_ctx", "logits_all",
                 "embedding", "offload_kqv", "flash_attn", "last_n_tokens_size", "lora_path", "numa",
                 "chat_format", "type_k", "type_v", "verbose")


class AdamasLlamaProxy(LlamaProxy):
    """Upstream's model proxy (model aliases, switching, /v1/models), building adamas_gguf.Llama."""

    @staticmethod
    def load_llama_from_model_settings(settings: ModelSettings) -> Llama:
        if not isinstance(settings, AdamasModelSettings):
            settings = AdamasModelSettings.model_validate(settings.model_dump())
        kwargs = {k: getattr(settings, k) for k in _LLAMA_FIELDS}
        llm = Llama(settings.model, adamas=settings.adamas, **kwargs)
        fmt = settings.chat_format
        if fmt is not None and fmt.startswith("chat_template."):  # one of the model's own templates
            name = fmt[len("chat_template."):]
            key = "tokenizer.chat_template" + ("" if name == "default" else "." + name)
            if key not in llm.metadata:
                llm.close()
                raise ValueError(f"chat format {fmt!r}: the model has no {key}")
        return llm


class AdamasStatus(BaseModel):
    model: str
    n_ctx: int
    params: dict
    sparse_layers: int
    sparse_steps: int
    unavailable_reason: Optional[str]
    rpc_devices: List[str]  # the rpc-servers' devices the layers are on (serve --rpc), [] without


def _adamas_router() -> APIRouter:
    router = APIRouter()

    @router.get(ADAMAS_ROUTE, summary="Adamas", tags=["Extras"],
                dependencies=[Depends(upstream_app.authenticate)])
    async def adamas_status(llama_proxy: LlamaProxy = Depends(upstream_app.get_llama_proxy)) -> AdamasStatus:
        llm = llama_proxy(None)
        p = llm.adamas
        return AdamasStatus(model=next(iter(llama_proxy)),  # the first alias: the default model
                            n_ctx=llm.n_ctx(), params={k: getattr(p, k) for k in ADAMAS_KEYWORDS},
                            sparse_layers=llm.adamas_n_sparse_layers, sparse_steps=llm.adamas_sparse_steps,
                            unavailable_reason=llm.adamas_unavailable_reason, rpc_devices=llm.rpc_devices)

    return router


def create_app(server_settings: AdamasServerSettings,
               model_settings: AdamasModelSettings | List[AdamasModelSettings]):
    """Upstream's app (llama_cpp.server.app.create_app) with our proxy and the Adamas route; loads the model
    (the first one: the default) now, so a bad file fails here."""
    models = model_settings if isinstance(model_settings, list) else [model_settings]
    for m in models:
        check_gguf(m.model)  # a missing, non-GGUF or truncated file: GGUFError, which says which
    # set_llama_proxy() builds the proxy by this module-level name
    upstream_app.LlamaProxy = AdamasLlamaProxy
    # upstream's create_app reads a config file named by $CONFIG_FILE over the settings passed: the
    # settings here are the caller's alone
    saved = os.environ.pop("CONFIG_FILE", None)
    try:
        app = upstream_app.create_app(server_settings=server_settings, model_settings=models)
    finally:
        if saved is not None:
            os.environ["CONFIG_FILE"] = saved
    app.include_router(_adamas_router())
    return app

