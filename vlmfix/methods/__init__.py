"""Each method's runtime: how its config becomes, at every layer, the kernel's parameters.

A runtime's lifecycle inside one patched model: ``install`` (hooks it needs beyond the attention function; returns
their handles), ``start_sequence`` at each prefill, ``extend_sequence`` at each decode step, and ``contribute`` at each
attention call of its layers. Order of application inside one attention call (kernel order): dual-stream emphasis on
the pre-softmax scores, then VAR's redistribution of the post-softmax weights, then VHR's head-output scale.
"""

from __future__ import annotations

from ..config import VAR, VHR, DualStream
from .dual_stream import DualStreamRuntime
from .var import VarRuntime
from .vhr import VhrRuntime

RUNTIMES = {VAR: VarRuntime, VHR: VhrRuntime, DualStream: DualStreamRuntime}


def runtime_for(cfg, adapter):
    return RUNTIMES[type(cfg)](cfg, adapter)


__all__ = ["runtime_for", "VarRuntime", "VhrRuntime", "DualStreamRuntime"]
