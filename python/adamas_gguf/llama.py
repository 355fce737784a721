"""`adamas_gguf.Llama`: llama_cpp.Llama running on our libraries, with the Adamas parameters."""
from __future__ import annotations

import ctypes
import dataclasses
from typing import Any, Optional, Sequence, Union

from . import _lib, models, rpc
from ._lib import llama_cpp
from .adamas import AdamasParams
from .gguf_check import check_gguf

_D = AdamasParams  # its class attributes are the field defaults (the library's defaults)
ADAMAS_KEYWORDS = tuple(f.name for f in dataclasses.fields(AdamasParams))


def _resolve(adamas: Optional[AdamasParams], keywords: dict) -> AdamasParams:
    """The parameters asked for, as `adamas=AdamasParams(...)` or as keywords (not both), validated."""
    if adamas is None:
        return AdamasParams(**keywords)
    if not isinstance(adamas, AdamasParams):
        raise TypeError(f"adamas must be an AdamasParams or None, got {type(adamas).__name__}")
    # a keyword left at its default cannot be told from one not given; any other value is a conflict
    both = [k for k, v in keywords.items() if v != getattr(_D, k)]
    if both:
        raise ValueError(f"give the Adamas parameters either as adamas=AdamasParams(...) or as keywords, "
                         f"not both (got adamas= and {', '.join(k + '=' for k in both)})")
    return adamas


def _check_flash_attn(params: AdamasParams, flash_attn: bool) -> None:
    if params.budget > 0 and not flash_attn:
        raise ValueError(f"Adamas (budget={params.budget}) needs flash attention: its sparse decode path "
                         "reads V stored untransposed; leave flash_attn=True (the default), or use budget=0")


class Llama(llama_cpp.Llama):
    """llama_cpp.Llama with the same API; existing code works by changing the import.

    Differences: flash attention is on by default (the Adamas sparse decode path needs it: V must not be
    stored transposed), the model file is validated first, so a missing, non-GGUF or truncated file
    raises `GGUFError` (a ValueError) that says which, `model_path` may be the name of a named model
    (`models.NAMED_MODELS`: "smollm2-135m", "gemma3-270m"; fetched into the cache on first use, an
    existing file of that name wins), and the Adamas parameters:

        Llama(path, budget=64)                              # Adamas on: 64 tokens per head per step
        Llama(path, adamas=AdamasParams(budget=64, n_sink=4))
        llm.set_adamas(budget=128); llm.adamas              # change / read them on a live object

    The keywords are the fields of `AdamasParams` (budget=0 keeps decoding dense). They are checked
    before anything else, the model file included: a bad value raises ValueError at no cost.

    `rpc_servers="host:port,host:port"` (or a list) puts the layers on rpc-servers (`python -m adamas_gguf
    rpc-server`, a build with ADAMAS_BUILD_RPC), for this model only; n_gpu_layers then defaults to -1 (every
    layer there), and split_mode/tensor_split/main_gpu apply to the servers' devices, in the order given, then
    the local GPUs. A server is checked first (rpc.RPCError, a ConnectionError, if none listens, it does not
    answer or speaks another protocol). Layers on a server without the same Adamas decode dense; see
    adamas_unavailable_reason. RPC has no authentication: keep servers on trusted networks.
    """

    def __new__(cls, *args: Any, **kwargs: Any):
        # Checked before the object exists: a half-built llama_cpp.Llama would complain in __del__.
        # The parameters first (cheap, and a mistake in the call whatever the file), then the file.
        params = _resolve(kwargs.get("adamas"), {k: kwargs[k] for k in ADAMAS_KEYWORDS if k in kwargs})
        _check_flash_attn(params, kwargs.get("flash_attn", True))
        if kwargs.get("rpc_servers") is not None:
            rpc.parse_servers(kwargs["rpc_servers"])  # the spelling; the servers themselves in __init__
            if kwargs.get("split_mode") == llama_cpp.LLAMA_SPLIT_MODE_ROW:
                # llama.cpp would fail the load with "device RPC0 does not support split buffers", which
                # llama_cpp.Llama reports as a model file it could not load
                raise ValueError("split_mode row: an rpc-server's device cannot hold rows of weights split over "
                                 "devices; split by layer (LLAMA_SPLIT_MODE_LAYER, the default) with rpc_servers")
        model_path = args[0] if args else kwargs.get("model_path")
        if model_path is not None:  # None: unpickling (__new__ without arguments, then __setstate__)
            check_gguf(models.resolve_model(model_path))
        return super().__new__(cls)

    def __init__(self, model_path: str, *args: Any, flash_attn: bool = True,
                 budget: int = _D.budget, n_dense: int = _D.n_dense, thr_mode: str = _D.thr_mode,
                 thr_q: float = _D.thr_q, thr_k: float = _D.thr_k, select: str = _D.select,
                 n_sink: int = _D.n_sink, n_recent: int = _D.n_recent, rerank: int = _D.rerank,
                 adamas: Optional[AdamasParams] = None,
                 rpc_servers: Optional[Union[str, Sequence[str]]] = None, **kwargs: Any):
        # resolved again (cheap): __init__ also runs without our __new__'s checks, from __setstate__
        params = _resolve(adamas, dict(budget=budget, n_dense=n_dense, thr_mode=thr_mode, thr_q=thr_q,
                                       thr_k=thr_k, select=select, n_sink=n_sink, n_recent=n_recent,
                                       rerank=rerank))
        _check_flash_attn(params, flash_attn)
        self.rpc_servers = None if rpc_servers is None else rpc.parse_servers(rpc_servers)
        if self.rpc_servers is not None:
            # before llama_cpp.Llama sets model_params (see the property below)
            self.__dict__["_rpc_devices"] = rpc.model_devices(self.rpc_servers)
            kwargs.setdefault("n_gpu_layers", -1)
        super().__init__(models.resolve_model(model_path), *args, flash_attn=flash_attn, **kwargs)
        self._apply_adamas(params)

    # llama_cpp.Llama builds its llama_model_params in __init__ and loads the model right after, with no hook in
    # between: as a property, the assignment lands here, where the RPC servers' device list is put in. The
    # struct is the one llama_cpp keeps using (it only sets fields on it afterwards).
    @property
    def model_params(self):
        try:
            return self.__dict__["_model_params"]
        except KeyError:  # before llama_cpp.Llama's __init__ set it, as without the property
            raise AttributeError("model_params") from None

    @model_params.setter
    def model_params(self, value) -> None:
        devices = self.__dict__.get("_rpc_devices")
        if devices is not None:
            value.devices = ctypes.addressof(devices)
        self.__dict__["_model_params"] = value

    def __del__(self) -> None:
        if "_stack" in self.__dict__:  # not when our __init__ stopped before llama_cpp.Llama's (a bad server)
            super().__del__()

    @property
    def rpc_devices(self) -> list:
        """The names of the devices given to llama.cpp for this model's layers with rpc_servers (e.g. ["RPC0"]),
        [] without."""
        return rpc.describe(self.__dict__.get("_rpc_devices"))

    # --------------------------------------------------------------------------------------------
    # Adamas

    def _ctx_ptr(self) -> int:
        ctx = getattr(getattr(self, "_ctx", None), "ctx", None)
        if ctx is None:  # closed: passing NULL to the library would crash the process
            raise ValueError("this Llama is closed")
        return ctx

    def _apply_adamas(self, params: AdamasParams) -> None:
        if _lib.llama_adamas_set(self._ctx_ptr(), params.to_c()) != 0:
            # not expected: the parameters passed the library's own check when they were made
            why = _lib.llama_adamas_params_check(params.to_c()) or "no reason given"
            raise ValueError(f"llama_adamas_set refused {params}: {why}")

    @property
    def adamas(self) -> AdamasParams:
        """The context's current Adamas parameters (read from the library: llama_adamas_get)."""
        return AdamasParams.from_c(_lib.llama_adamas_get(self._ctx_ptr()))

    def set_adamas(self, params: Optional[AdamasParams] = None, /, **changes: Any) -> AdamasParams:
        """Change the Adamas parameters; they apply from the next decode. `set_adamas(budget=128)` changes
        the fields named and keeps the others; `set_adamas(AdamasParams(...))` replaces all of them.
        A bad value raises ValueError (an unknown name TypeError) and changes nothing. Returns the new
        parameters, as the library now has them."""
        base = self.adamas if params is None else params
        if not isinstance(base, AdamasParams):
            raise TypeError(f"set_adamas takes an AdamasParams or keywords, got {type(base).__name__}")
        new = base.replace(**changes) if changes else base
        _check_flash_attn(new, self.context_params.flash_attn_type != llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        self._apply_adamas(new)
        return self.adamas

    @property
    def adamas_n_sparse_layers(self) -> int:
        """Layers that run sparse decode steps with the current parameters (0 when the budget is 0 or
        Adamas cannot serve this model: see adamas_unavailable_reason)."""
        return int(_lib.llama_adamas_n_sparse_layers(self._ctx_ptr()))

    @property
    def adamas_sparse_steps(self) -> int:
        """Decode steps (ubatches) this context has run with sparse attention so far."""
        return int(_lib.llama_adamas_n_sparse_steps(self._ctx_ptr()))

    @property
    def adamas_unavailable_reason(self) -> Optional[str]:
        """Why Adamas cannot serve this model on its devices (it then decodes dense), or None if it can."""
        return _lib.llama_adamas_unavailable_reason(self._ctx_ptr())

    @property
    def adamas_layer_reasons(self) -> list:
        """Per layer, why it decodes dense with the current parameters (e.g. a sliding-window layer, which
        attends to its window only, or one of the first n_dense full-attention layers), or None where it
        runs sparse."""
        ctx = self._ctx_ptr()
        return [_lib.llama_adamas_layer_reason(ctx, il) for il in range(llama_cpp.llama_model_n_layer(self.model))]

    @property
    def adamas_refused_layers(self) -> dict:
        """{layer: reason} for the layers past n_dense that decode dense because their device cannot run Adamas
        while other layers of the model run sparse (layers split over devices: e.g. an RPC server without the
        same Adamas); {} otherwise (the whole model dense: see adamas_unavailable_reason)."""
        if self.adamas_unavailable_reason is not None or self.adamas.dense:
            return {}
        by_design = ("sliding-window layer", "no KV-cache attention in this layer", "one of the first n_dense")
        return {il: r for il, r in enumerate(self.adamas_layer_reasons)
                if r is not None and not r.startswith(by_design)}

    def adamas_verify_codes(self) -> int:
        """For tests: re-encode every used cache cell's key on the CPU and count the stored code rows that
        differ (0: the codes are right; -1: the check could not run)."""
        return int(_lib.llama_adamas_verify_codes(self._ctx_ptr()))

    def __getstate__(self):
        # pickling rebuilds the object through __init__(**state): keep the Adamas parameters
        state = super().__getstate__()
        state["adamas"] = self.adamas
        state["rpc_servers"] = self.rpc_servers
        return state
