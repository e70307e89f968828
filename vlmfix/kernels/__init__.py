"""How attention is re-weighted: one interface, two backends (Triton on CUDA, plain torch elsewhere and as the oracle).

Knows nothing of models or methods: only queries, keys, values, key classes (``classes.py``) and per-(batch, head,
class) parameters (``ReweightParams``). The semantics are documented in ``reference.py``.
"""

from __future__ import annotations

from typing import Iterable

import torch

from . import reference
from .classes import LOCAL, NUM_CLASSES, SINK, SUMMARY, VISUAL
from .reference import STATS, ReweightParams

BACKENDS = ("auto", "triton", "torch")


_triton_module = None  # the Triton backend module once imported; False when it cannot be


def _triton():
    global _triton_module
    if _triton_module is None:
        try:
            from . import triton_attention
        except Exception:  # pragma: no cover - triton missing or broken
            _triton_module = False
        else:
            _triton_module = triton_attention
    return _triton_module


def triton_available(device: torch.device | None = None) -> bool:
    """Triton runs on CUDA tensors, or anywhere under ``TRITON_INTERPRET=1`` (slow: tests only)."""
    module = _triton()
    if not module:
        return False
    if module.INTERPRET:
        return True
    return device is not None and device.type == "cuda"


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; supported: {list(BACKENDS)}")
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_available(device) else "torch"
    if backend == "triton" and not triton_available(device):
        raise RuntimeError("backend='triton' needs a CUDA device (or TRITON_INTERPRET=1 set before import)")
    return backend


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, mask: torch.Tensor | None = None,
              params: ReweightParams | None = None, want: Iterable[str] = (), backend: str = "auto"):
    """Re-weighted attention; returns ``(out (B, M, Hq, D), stats dict)``. See ``reference.py`` for the semantics.

    This runs once per layer and token: the common cases (a CUDA tensor, or ``torch``) take one branch each.
    """
    if backend != "torch" and q.is_cuda and backend in BACKENDS:
        module = _triton()
        if module:
            return module.attention(q, k, v, scale=scale, mask=mask, params=params, want=want)
    if resolve_backend(backend, q.device) == "triton":
        return _triton().attention(q, k, v, scale=scale, mask=mask, params=params, want=want)
    return reference.attention(q, k, v, scale=scale, mask=mask, params=params, want=want)


__all__ = ["attention", "ReweightParams", "STATS", "BACKENDS", "resolve_backend", "triton_available",
           "VISUAL", "SINK", "LOCAL", "SUMMARY", "NUM_CLASSES"]
