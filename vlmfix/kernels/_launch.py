"""Launching a ``@triton.jit`` kernel without Triton's per-call argument binding, when that is safe.

``kernel[grid](*args, **constexprs)`` binds and specialises every argument on every call before it looks the compiled
kernel up: for our ~60-argument kernels that is tens of microseconds of Python per layer and token, on a decode path
that the host already paces. Which compiled kernel a call needs depends only on the constexpr values, the compile
options and, per runtime argument, on what Triton specialises: a tensor's dtype and 16-byte alignment, an integer's
being 1 or a multiple of 16 (a float is not specialised). ``DirectLaunch`` keys its own cache on exactly that: a call
with a new key goes through Triton (which compiles or finds the kernel, launches it and returns it), later calls with
the same key launch the compiled kernel directly through ``CompiledKernel[grid]``, Triton's own launcher for a
compiled kernel (launch hooks included), handing it the stream it would look up itself (``stream_getter``).

The leading tensor arguments (the kernels declare their pointers first) reach the compiled launcher as addresses:
given a tensor, Triton's C launcher calls its ``data_ptr`` method and asks the driver to validate the address
(``cuPointerGetAttribute``), one driver call per pointer, about twenty per launch here. The key records each of these
tensors' device instead, so a tensor on another device (or on the CPU) selects another entry and goes through
Triton's own path, which checks it as before.

If a direct launch raises, the kernel goes back to Triton's own path for good. Under ``TRITON_INTERPRET=1`` there is
no compiled kernel: every call takes Triton's path.

With ``compile_only`` set, a call compiles the kernel it would launch (Triton's ``warmup``: the same binding, so the
same compiled kernel a launch would find) and launches nothing; inside ``triton.AsyncCompileMode`` those compiles run
in its thread pool (``triton_attention.compile_ahead``).
"""

from __future__ import annotations

import warnings

import torch

_Tensor = torch.Tensor

# The current CUDA device without ``torch.cuda.current_device``'s lazy-initialisation check, which is Python on every
# layer call. Only for code that holds a CUDA tensor: CUDA is initialised then, and both give the same device.
current_device = getattr(torch._C, "_cuda_getDevice", None) or torch.cuda.current_device


def stream_getter(device: int):
    """``() -> int`` for a launch on the GPU ``device`` (a tensor's ``get_device()``; -1: the CPU, which returns None):
    the raw stream a compiled kernel's runner launches on when it is given none, the current stream of the current
    device, through the same driver functions Triton's runner calls, except that the driver's
    ``torch.cuda.current_device`` is replaced by ``current_device`` (a few us per layer call on a slow host). None
    where the runner is to look the stream up itself."""
    if device < 0:
        return None
    try:
        from triton.runtime import driver

        active = driver.active
        get_stream, get_device = active.get_current_stream, active.get_current_device
    except Exception:  # no GPU driver (a test's stand-in kernel): the runner looks the stream up itself
        return None
    if get_device is torch.cuda.current_device:
        get_device = current_device
    return lambda: get_stream(get_device())


def specialisation(args: tuple) -> tuple:
    """What Triton's compiled-kernel choice can depend on, per runtime argument (2 for an integer 1, which must not
    compare equal to the True of a multiple of 16)."""
    return tuple([(2 if a == 1 else a & 15 == 0) if type(a) is int
                  else ((a.dtype, a.data_ptr() & 15 == 0) if isinstance(a, _Tensor) else None) for a in args])


class DirectLaunch:
    """``launch(grid, args, constexprs, options)``: ``fn[grid](*args, **constexprs, **options)``, mostly without
    Triton's binding. ``grid`` has three entries (a compiled kernel's launcher reads all three), ``args`` are the
    runtime arguments in the kernel's order, ``constexprs`` every constexpr parameter by name (the kernels declare
    their constexprs after all runtime arguments)."""

    def __init__(self, fn, enabled: bool):
        self.fn = fn
        self.enabled = enabled
        self.error = None  # why the direct path was given up, if it was
        self.compile_only = False
        self._plans: dict = {}
        self._streams: dict = {}  # device index -> stream_getter(device), made once per device
        self._n_lead = None  # how many leading arguments are tensors (counted at the first call)
        self.n_runtime, self.constexpr_names = None, ()
        if enabled:  # (the interpreter's functions carry no parameter list)
            params = fn.params
            self.n_runtime = sum(1 for p in params if not p.is_constexpr)
            self.constexpr_names = tuple(p.name for p in params if p.is_constexpr)
            if any(p.is_constexpr for p in params[:self.n_runtime]):
                raise TypeError(f"{fn.__name__}: constexpr parameters must come after the runtime ones")

    def key(self, args: tuple, constexprs: dict, options: dict) -> tuple[tuple, list]:
        """(the cache key of a call, the addresses of its leading tensors); AttributeError where a leading argument
        is not a tensor."""
        if self._n_lead is None:
            self._n_lead = next((i for i, a in enumerate(args) if not isinstance(a, _Tensor)), len(args))
        lead = args[:self._n_lead]
        ptrs = [a.data_ptr() for a in lead]
        # (compiled kernels are loaded per GPU: a tensor's device is part of the key)
        return ((tuple([(a.dtype, a.get_device(), p & 15 == 0) for a, p in zip(lead, ptrs)]),
                 specialisation(args[self._n_lead:]), tuple(constexprs.values()), tuple(constexprs),
                 tuple(options.items())), ptrs)

    def __call__(self, grid, args: tuple, constexprs: dict, options: dict):
        """Launches; returns the compiled kernel where this call's signature launches directly from now on (what
        ``runner`` hands a decode recipe), None where it took Triton's path for good or only compiled."""
        if self.compile_only:
            self.fn.warmup(*args, grid=grid, **constexprs, **options)
            return None
        if not self.enabled:
            self.fn[grid](*args, **constexprs, **options)
            return None
        if len(args) != self.n_runtime:
            raise TypeError(f"{self.fn.__name__} takes {self.n_runtime} runtime arguments, got {len(args)}")
        if len(grid) != 3:
            raise ValueError(f"grid must have three entries, got {grid}")
        try:
            key, ptrs = self.key(args, constexprs, options)
        except AttributeError:  # not a tensor where the first call had one: Triton's path, uncached
            self.fn[grid](*args, **constexprs, **options)
            return None
        plan = self._plans.get(key)
        if plan is None:
            compiled = self.fn[grid](*args, **constexprs, **options)
            self._plans[key] = (compiled, tuple(constexprs[n] for n in self.constexpr_names),
                                self.stream_for(args[0].get_device() if ptrs else -1))
            return compiled
        compiled, consts, stream = plan
        try:
            if stream is None:
                compiled[grid](*ptrs, *args[len(ptrs):], *consts)
            else:
                compiled[grid](*ptrs, *args[len(ptrs):], *consts, stream=stream())
        except Exception as exc:  # an unexpected launcher of this Triton version: Triton's own path from now on
            self.give_up(exc)
            self.fn[grid](*args, **constexprs, **options)
            return None
        return compiled

    def runner(self, compiled, grid, constexprs: dict, device: int):
        """(``compiled``'s launcher for ``grid``, the constexpr values in parameter order, ``stream_for(device)``),
        for a decode recipe (``_recipes.DecodeRecipe``) to call with the leading tensors as addresses, then the other
        arguments, then the constexprs, and the stream where there is a getter; None where ``compiled`` is (a launch
        that did not launch directly) or direct launches stopped. ``compiled`` is what a launch of the recipe's own
        arguments on ``device`` returned: the kernel keyed on exactly them, so no second key is derived."""
        if compiled is None or not self.enabled or self.compile_only:
            return None
        return compiled[grid], tuple([constexprs[n] for n in self.constexpr_names]), self.stream_for(device)

    def stream_for(self, device: int):
        """``stream_getter(device)``, made once per device: every new plan and every new decode recipe (each step's
        first call of each signature) asks for it."""
        try:
            return self._streams[device]
        except KeyError:
            getter = self._streams[device] = stream_getter(device)
            return getter

    def give_up(self, exc: Exception):
        """Launches through Triton's own path from now on, after the direct launch raised ``exc``."""
        self.enabled = False
        self.error = f"{type(exc).__name__}: {exc}"
        self._plans.clear()
        warnings.warn(f"vlmfix: launching {self.fn.__name__} directly failed ({self.error}); using Triton's "
                      "slower launch path from now on", RuntimeWarning, stacklevel=3)
