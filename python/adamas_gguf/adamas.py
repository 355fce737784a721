"""Adamas parameters (`AdamasParams`): checked in Python, with messages that name the parameter, and then
by the library itself (llama_adamas_params_check), so that Python never accepts what C would refuse.

The C struct is `struct llama_adamas_params` (llama-adamas.h); here the enums are strings ("rms"/"fixed",
"group"/"head"/"exact") and `select_mode` is called `select`.
"""
from __future__ import annotations

import ctypes
import dataclasses
import math
import numbers
import operator
from dataclasses import dataclass
from typing import Any

from . import _lib

THR_MODES = {"rms": _lib.LLAMA_ADAMAS_THR_RMS, "fixed": _lib.LLAMA_ADAMAS_THR_FIXED}
SELECT_MODES = {"group": _lib.LLAMA_ADAMAS_SELECT_GROUP, "head": _lib.LLAMA_ADAMAS_SELECT_HEAD,
                "exact": _lib.LLAMA_ADAMAS_SELECT_EXACT}
INT32_MAX = 2**31 - 1
RECENT_AUTO = _lib.LLAMA_ADAMAS_RECENT_AUTO  # n_recent: min(16, budget/4, budget - n_sink)
FLOAT_MAX = 3.4028234663852886e38  # the largest finite C float

__all__ = ["AdamasParams", "THR_MODES", "SELECT_MODES"]


def _choices(d: dict) -> str:
    return ", ".join(repr(k) for k in d)


def _int(name: str, v: Any, lo: int, what: str = "") -> int:
    # operator.index takes int and numpy integers, not floats or strings; a bool is a mistake here
    if isinstance(v, bool):
        raise TypeError(f"{name} must be an int, got {v!r}")
    try:
        i = operator.index(v)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {v!r} ({type(v).__name__})") from None
    if i < lo:
        raise ValueError(f"{name} must be >= {lo}{what}, got {i}")
    if i > INT32_MAX:
        raise ValueError(f"{name} must be at most {INT32_MAX} (a C int32_t), got {i}")
    return int(i)


def _threshold(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a number, got {v!r} ({type(v).__name__})")
    x = float(v)
    if not math.isfinite(x) or x <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {x!r}")
    # the library keeps a C float: store the value it will use, so that params read back compare equal
    f = ctypes.c_float(x).value
    if not math.isfinite(f):
        raise ValueError(f"{name} must be at most {FLOAT_MAX:g} (a C float), got {x!r}")
    if f <= 0:
        raise ValueError(f"{name} must be a C float > 0, got {x!r}, which a C float rounds to 0")
    return f


def _mode(name: str, v: Any, modes: dict) -> str:
    if not isinstance(v, str) or v not in modes:
        raise ValueError(f"{name} must be one of {_choices(modes)}, got {v!r}")
    return v


@dataclass(frozen=True)
class AdamasParams:
    """The Adamas parameters of a context (see llama-adamas.h).

    budget    tokens attended per head in a sparse decode step; 0 = dense (Adamas off)
    n_dense   the first n_dense layers stay dense (sliding-window layers do not count: they are never sparse)
    thr_mode  "rms": bucket thresholds at +-thr * the RMS of each Hadamard-transformed vector;
              "fixed": at +-thr (the paper uses 10)
    thr_q     threshold (fixed) or RMS factor (rms) for queries, > 0
    thr_k     the same for keys, > 0
    select    "group": one token selection per KV head (its query heads' distances summed);
              "head": one per query head;
              "exact": the reference, each query head attends its true top budget by exact q.k over every
              visible cell (equal logits: the better code rank); it reads all of K every step, so it is no
              faster than dense; rerank is not used; sink and recent tokens are kept first
    n_sink    the first n_sink tokens of the sequence are always attended (counted in the budget)
    n_recent  the n_recent most recent tokens are always attended (counted in the budget); RECENT_AUTO (-1,
              the default): min(16, budget/4, budget - n_sink), `.recent` gives the count
    rerank    1: attend the budget nearest by code distance; R > 1 (default 4): the R*budget nearest are a
              pool, and the budget with the highest exact q.k among them are attended (sink and recent
              tokens are kept first, inside the budget)

    The defaults are the library's (llama_adamas_default_params(); `AdamasParams.c_defaults()`).
    Construction validates: a bad value raises ValueError (TypeError for a wrong type) naming it. Thresholds
    are stored rounded to a C float, the value the library uses. Change a field with `.replace(...)`.
    """

    budget: int = 0
    n_dense: int = 2
    thr_mode: str = "rms"
    thr_q: float = 0.5
    thr_k: float = 1.0
    select: str = "head"
    n_sink: int = 0
    n_recent: int = _lib.LLAMA_ADAMAS_RECENT_AUTO
    rerank: int = 4

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)  # frozen: normalize once, here

        put("budget", _int("budget", self.budget, 0, " (0 = dense)"))
        put("n_dense", _int("n_dense", self.n_dense, 0, " (the number of first full-attention layers kept dense)"))
        put("thr_mode", _mode("thr_mode", self.thr_mode, THR_MODES))
        put("thr_q", _threshold("thr_q", self.thr_q))
        put("thr_k", _threshold("thr_k", self.thr_k))
        put("select", _mode("select", self.select, SELECT_MODES))
        put("n_sink", _int("n_sink", self.n_sink, 0))
        put("n_recent", _int("n_recent", self.n_recent, RECENT_AUTO, " (a count of tokens, or RECENT_AUTO = -1)"))
        put("rerank", _int("rerank", self.rerank, 1, " (1 = off)"))
        # the library's rule: auto recent tokens fit in what the sinks leave, so they count as none here
        if self.budget > 0 and self.n_sink + max(self.n_recent, 0) > self.budget:
            kept = (f"n_sink ({self.n_sink})" if self.n_recent == RECENT_AUTO else
                    f"n_sink + n_recent ({self.n_sink} + {self.n_recent} = {self.n_sink + self.n_recent})")
            raise ValueError(f"{kept} must not exceed budget ({self.budget}): sink and recent tokens are "
                             "attended inside the budget")
        # the final word is the library's: Python must never pass what llama_adamas_set would refuse
        msg = _lib.llama_adamas_params_check(self.to_c())
        if msg is not None:
            raise ValueError(f"invalid Adamas parameters: {msg}")

    @property
    def recent(self) -> int:
        """The recent tokens a step keeps (RECENT_AUTO resolved by the library)."""
        return _lib.llama_adamas_n_recent(self.to_c())

    @property
    def dense(self) -> bool:
        """True when Adamas is off (budget 0)."""
        return self.budget == 0

    def replace(self, **changes: Any) -> "AdamasParams":
        """A copy with some fields changed (validated); an unknown name raises TypeError."""
        return dataclasses.replace(self, **changes)

    def to_c(self) -> _lib.llama_adamas_params:
        return _lib.llama_adamas_params(
            budget=self.budget, n_dense=self.n_dense, thr_mode=THR_MODES[self.thr_mode], thr_q=self.thr_q,
            thr_k=self.thr_k, select_mode=SELECT_MODES[self.select], n_sink=self.n_sink,
            n_recent=self.n_recent, rerank=self.rerank)

    @classmethod
    def from_c(cls, p: _lib.llama_adamas_params) -> "AdamasParams":
        def name(modes: dict, value: int, what: str) -> str:
            for k, v in modes.items():
                if v == value:
                    return k
            raise ValueError(f"the library returned an unknown {what} {value}")

        return cls(budget=p.budget, n_dense=p.n_dense, thr_mode=name(THR_MODES, p.thr_mode, "thr_mode"),
                   thr_q=p.thr_q, thr_k=p.thr_k, select=name(SELECT_MODES, p.select_mode, "select_mode"),
                   n_sink=p.n_sink, n_recent=p.n_recent, rerank=p.rerank)

    @classmethod
    def c_defaults(cls) -> "AdamasParams":
        """The library's defaults, llama_adamas_default_params() (equal to AdamasParams())."""
        return cls.from_c(_lib.llama_adamas_default_params())

    def __str__(self) -> str:
        def val(name: str) -> str:
            v = getattr(self, name)
            return f"{v:g}" if isinstance(v, float) else "auto" if name == "n_recent" and v == RECENT_AUTO else str(v)
        return " ".join(f"{f.name}={val(f.name)}" for f in dataclasses.fields(self))
