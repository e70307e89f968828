"""``patch`` / ``unpatch`` / ``patched`` / ``record_attention``: the reversible, per-model entry points.

Patching never replaces a class or a module-level function. It (1) switches the language model's sub-config to the
registered ``vlmfix`` attention implementation (the vision tower too, to a pass-through, only when dual-stream needs
its scores), (2) tags each decoder attention module with its session and layer index, and (3) adds forward hooks.
``unpatch`` undoes exactly these three things, so the model is bit-identical to one never patched.
"""

from __future__ import annotations

import contextlib
import functools
import inspect

from ..config import DualStream, method_from
from ..kernels import resolve_backend
from ..methods import runtime_for
from .adapter import adapter_for
from .attention_fn import LAYER_ATTR, TEXT_IMPL, VISION_IMPL, AttrRemover, ensure_registered
from .session import AttentionRecord, PatchSession

SESSION_ATTR = "_vlmfix_session"


class PatchHandle:
    """What ``patch`` returns; ``remove()`` is ``unpatch``."""

    def __init__(self, model, session, hook_handles, original_impl):
        self.model = model
        self.session = session
        self._hooks = hook_handles
        self._original_impl = original_impl

    @property
    def methods(self):
        return tuple(rt.cfg for rt in self.session.runtimes)

    def remove(self):
        model = self.model
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        model.set_attn_implementation(self._original_impl)
        if getattr(model, SESSION_ATTR, None) is self:
            delattr(model, SESSION_ATTR)

    def __repr__(self):
        names = ", ".join(type(c).__name__ for c in self.methods) or "no methods (recording only)"
        return f"<vlmfix patch on {type(self.model).__name__}: {names}; backend={self.session.backend}>"


def is_patched(model) -> bool:
    return getattr(model, SESSION_ATTR, None) is not None


def get_patch(model) -> PatchHandle | None:
    return getattr(model, SESSION_ATTR, None)


def _sub_impl(config, key):
    sub = getattr(config, key, None)
    return sub._attn_implementation if sub is not None else None


def patch(model, *methods, backend: str = "auto", replace: bool = False) -> PatchHandle:
    """Route ``model``'s language-model attention through vlmfix with the given methods (names, dicts or configs).

    Patching an already patched model raises, unless ``replace=True`` (then the old patch is removed first). With no
    method the model is only instrumented (``record_attention`` uses this); outputs stay those of SDPA.
    """
    if is_patched(model):
        if not replace:
            raise RuntimeError(f"{type(model).__name__} is already patched ({get_patch(model)!r}); call "
                               "vlmfix.unpatch(model) first, or pass replace=True to swap the methods")
        unpatch(model)
    if len(methods) == 1 and isinstance(methods[0], (list, tuple)):
        methods = tuple(methods[0])
    configs = [method_from(m) for m in methods]
    kinds = [type(c) for c in configs]
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"each method may appear once per patch, got {[k.__name__ for k in kinds]}")
    adapter = adapter_for(model)
    device = next(model.parameters()).device
    backend = resolve_backend(backend, device)
    ensure_registered()

    runtimes = [runtime_for(cfg, adapter) for cfg in configs]
    session = PatchSession(model, adapter, runtimes, backend)
    config = model.config
    original = {key: _sub_impl(config, key) for key in config.sub_configs if getattr(config, key, None) is not None}
    text_key = "text_config"
    if text_key not in original:
        raise RuntimeError(f"{type(model).__name__} has no text_config sub-config; its adapter must say how to route "
                           "the language model")
    target = {text_key: TEXT_IMPL}
    if any(isinstance(c, DualStream) for c in configs) and "vision_config" in original:
        target["vision_config"] = VISION_IMPL

    hooks = []
    try:
        modules = adapter.attention_modules()
        for idx, module in enumerate(modules):
            setattr(module, LAYER_ATTR, (session, idx))
        hooks.append(AttrRemover(modules, LAYER_ATTR))
        hooks.append(model.register_forward_pre_hook(
            lambda mod, args, kwargs: session.on_model_forward(_forward_kwargs(args, kwargs)), with_kwargs=True))
        hooks.append(_watch_image_features(adapter, session))
        for rt in runtimes:
            hooks.extend(rt.install(session))
        model.set_attn_implementation(target)
    except Exception:
        for h in hooks:
            h.remove()
        model.set_attn_implementation(original)
        raise
    handle = PatchHandle(model, session, hooks, original)
    setattr(model, SESSION_ATTR, handle)
    return handle


def _watch_image_features(adapter, session):
    """Remember the arguments of the model's image encoder (image sizes, grids) at every call.

    ``generate`` may encode images before the forward and drop those arguments from the forward's kwargs, yet the
    adapters need them to map patches to tokens and to build VHR's image-free twin. The wrapper is an instance
    attribute (the class is untouched) carrying the original signature, which ``generate`` inspects.
    """
    owner = adapter.image_encoder_owner()
    original = getattr(owner, "get_image_features", None)
    if original is None:
        return AttrRemover([owner], "get_image_features")
    signature = inspect.signature(original)

    @functools.wraps(original)
    def get_image_features(*args, **kwargs):
        try:
            bound = signature.bind_partial(*args, **kwargs).arguments
        except TypeError:
            bound = kwargs
        session.image_kwargs = {k: v for k, v in bound.items() if k not in ("pixel_values", "kwargs")}
        return original(*args, **kwargs)

    owner.get_image_features = get_image_features
    return AttrRemover([owner], "get_image_features")


def _forward_kwargs(args, kwargs):
    if args and "input_ids" not in kwargs:
        kwargs = dict(kwargs, input_ids=args[0])
    return kwargs


def unpatch(model) -> None:
    """Give back exactly the original model: attention implementations restored, every hook and tag removed."""
    handle = get_patch(model)
    if handle is None:
        raise RuntimeError(f"{type(model).__name__} is not patched by vlmfix")
    handle.remove()


@contextlib.contextmanager
def patched(model, *methods, backend: str = "auto"):
    """``with vlmfix.patched(model, "var"):`` patches for the block and restores the model on exit, errors included."""
    handle = patch(model, *methods, backend=backend)
    try:
        yield handle
    finally:
        if get_patch(model) is handle:
            handle.remove()


@contextlib.contextmanager
def record_attention(model, layers=None):
    """Record the last query row's attention (head mean) at ``layers`` for every forward inside the block.

    Works on a patched model (the recorded attention is the re-weighted one) and on an unpatched one (instrumented
    for the block only). ``layers=None`` = the middle third of the language model.
    """
    owned = None
    if not is_patched(model):
        owned = patch(model)
    session = get_patch(model).session
    if layers is None:
        n = session.n_layers
        layers = tuple(range(n // 3, max(n // 3 + 1, 2 * n // 3)))
    record = AttentionRecord(layers=tuple(sorted(layers)))
    previous, session.record = session.record, record
    try:
        yield record
    finally:
        session.record = previous
        if owned is not None:
            owned.remove()
