"""The Triton wrapper with its per-call launches swapped out, for the scripts that time or inspect its host path
(``profile_overhead.py``) or the calls it would make (``compiled_code.py``) without launching anything."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def launches_replaced(make):
    """The wrapper's decode and forward launches (``DirectLaunch`` objects) replaced by ``make(direct_launch)``."""
    from vlmfix.kernels import triton_attention as ta

    saved = ta._decode_launch, ta._fwd_launch
    ta._decode_launch, ta._fwd_launch = make(saved[0]), make(saved[1])
    try:
        yield
    finally:
        ta._decode_launch, ta._fwd_launch = saved
