"""Decode launches replayed from a recipe: the per-layer, per-token host path cut to a lookup and a few addresses.

A decode step calls attention once per layer, and within one step every layer's call looks the same: the same
shapes, strides, dtypes, scalars and parameter layout, only other tensors (this layer's queries, cache, SINK-bit row,
hidden state, head scales). Deriving the launch from scratch (``triton_attention.attention``) and letting
``DirectLaunch`` recompute its key from ~60 arguments costs ~18 us of Python per call on a slow CPU, paid ~30 times a
step on a path the host paces. So the first call of a signature takes that path and leaves a ``DecodeRecipe``: the
launch's arguments with each tensor slot tied to the call input it came from. Later calls with the same signature
only read their inputs' addresses into those slots and launch the compiled kernel.

What makes a replay exact: the signature (``decode_signature``) holds everything the launch is computed from besides
the tensors' addresses (every shape, stride, dtype, device and scalar), so every integer, float and constexpr of the
launch is the recorded one; a recipe is only made when the call used its inputs as they came (no copy, no conversion,
every address 16-byte aligned) and a replay checks the alignment of its own addresses, the one thing Triton still
specialises a compiled kernel on. Fixed tensors (the split workspace, the merge's counters, the sink test's channel
list) are held by the recipe, so their addresses stay valid. ``tests/test_kernels.py`` checks that a replay hands the
launcher exactly what the full path would.
"""

from __future__ import annotations

import operator
from functools import reduce

import torch

# Call inputs in the order a recipe indexes them; ``OUT`` is the freshly allocated output.
Q, K, V, MASK, CLS, LOG_BIAS, AMP, VAR_P, HEAD_SCALE, BITS, HIDDEN, OUT = range(12)
# The input each leading tensor argument of the decode kernel is, in its parameter order (None: not an input).
NATURAL_SLOTS = (Q, K, V, OUT, MASK, CLS, LOG_BIAS, AMP, VAR_P, HEAD_SCALE, None, None,  # ... lse, mass
                 None, None, None, None, BITS, HIDDEN, None)  # workspaces and counters, bits, hidden, channels


def decode_signature(q, k, v, scale, mask, params) -> tuple[tuple, list]:
    """(the signature of a one-row call, its inputs in recipe order without the output).

    Every value the full path derives the launch from: each input's shape, strides, dtype and device, and every
    scalar; any change here may change an integer, a constexpr or the compiled kernel. The sink test's channel tensor
    enters by identity (its values are read by the kernel); a recipe keeps it alive, so its ``id`` cannot be reused
    while the recipe exists. (One comprehension over the inputs: this runs in every decode layer call.)
    """
    if params is None:
        inputs = [q, k, v, mask, None, None, None, None, None, None, None]
        scalars = (scale,)
    else:
        sb = params.sink_bits
        scalars = (scale, params.var_rho, params.var_min_mass, params.amp_start)
        if sb is None:
            bits = hidden = None
        else:
            bits, hidden = sb.bits, sb.hidden
            scalars += (sb.first, id(sb.channels), sb.threshold, sb.eps_norm, sb.strict)
        inputs = [q, k, v, mask, params.key_class, params.log_bias, params.amp, params.var_p, params.head_scale,
                  bits, hidden]
    return (*[None if t is None else (t.shape, t.stride(), t.dtype, t.get_device()) for t in inputs],
            *scalars), inputs


class DecodeRecipe:
    """One recorded decode launch: the arguments, where each tensor slot's address comes from, the output's shape, and
    (once the launcher has a compiled kernel for it) the compiled kernel's launcher with the constexpr tail."""

    __slots__ = ("grid", "args", "constexprs", "options", "slots", "pick", "fixed", "fixed_addr", "out_shape",
                 "dtype", "device", "launch", "runner", "tail", "stream")

    def __init__(self, grid, args, constexprs, options, slots, fixed, out_shape, dtype, device, launch, compiled):
        """``args``: the recorded launch's arguments; ``slots``: per leading tensor argument, an index into the inputs,
        the output, then ``fixed``; ``compiled``: what ``launch`` (a ``DirectLaunch``) returned for ``args``. Binds
        that compiled kernel, if there is one, then forgets the call's own tensors: a recipe must not keep a step's
        cache alive."""
        self.grid, self.constexprs, self.options = grid, constexprs, options
        self.slots = slots
        self.pick = operator.itemgetter(*slots)  # (the addresses in argument order; slots has one entry per tensor)
        self.fixed = fixed  # tensors the launch uses that are not call inputs (kept alive here)
        self.fixed_addr = [t.data_ptr() for t in fixed]
        self.out_shape, self.dtype, self.device = out_shape, dtype, device
        self.launch = self.runner = self.tail = self.stream = None
        self.bind(launch, compiled, args)
        self.args = (*[None if j <= OUT else a for j, a in zip(slots, args)], *args[len(slots):])

    def bind(self, launch, compiled, args):
        """Takes ``compiled``, what ``launch`` returned for ``args`` (a launch of this recipe with a call's tensors), if
        the launcher hands it out for direct calls (it does not: Triton's interpreter, compile-only mode, a launcher
        that gave the direct path up, a test's spy without ``runner``)."""
        runner = getattr(launch, "runner", None)
        found = runner(compiled, self.grid, self.constexprs, args[0].get_device()) if runner is not None else None
        if found is not None:
            self.launch, (self.runner, consts, self.stream) = launch, found
            self.tail = (*args[len(self.slots):], *consts)

    def replay(self, launch, inputs: list, empty):
        """The output of this recipe's launch on ``inputs`` (``decode_signature``'s list), or None where the call must
        take the full path (a misaligned address, a launcher that gave up the direct path, compile-only mode)."""
        if launch is not self.launch:  # no compiled kernel at hand (the interpreter, a test's spy): the launcher decides
            out = empty(self.out_shape, dtype=self.dtype, device=self.device)
            every = [*inputs, out]
            args = list(self.args)
            for i, j in enumerate(self.slots):
                if j <= OUT:
                    t = every[j]
                    args[i] = t.view(torch.uint8) if t.dtype == torch.bool else t
            args = tuple(args)
            compiled = launch(self.grid, args, self.constexprs, self.options)
            if self.launch is None:
                self.bind(launch, compiled, args)  # (a recipe made in compile-only mode finds its kernel here)
            return out
        if not launch.enabled or launch.compile_only:
            return None
        addr = [t.data_ptr() if t is not None else 0 for t in inputs]
        if reduce(operator.or_, addr) & 15:
            return None
        out = empty(self.out_shape, dtype=self.dtype, device=self.device)
        addr.append(out.data_ptr())
        addr += self.fixed_addr
        try:
            if self.stream is None:
                self.runner(*self.pick(addr), *self.tail)
            else:
                self.runner(*self.pick(addr), *self.tail, stream=self.stream())
        except Exception as exc:  # an unexpected launcher: the full path (Triton's own launch) from now on
            launch.give_up(exc)
            return None
        return out
