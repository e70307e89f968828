"""The attention functions vlmfix registers with transformers, once per process.

Registration is the only global act of the package: the functions themselves are stateless and find their model's
session through an attribute the patch puts on each attention module (and removes on unpatch). The mask function must
be registered under the same name, otherwise transformers hands the function ``attention_mask=None`` and padding is
silently ignored.
"""

from __future__ import annotations

from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

TEXT_IMPL = "vlmfix"
VISION_IMPL = "vlmfix_vision"
LAYER_ATTR = "_vlmfix_layer"
VISION_ATTR = "_vlmfix_vision"


def text_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Language-model attention: the owning session decides the re-weighting for this layer."""
    hook = getattr(module, LAYER_ATTR, None)
    if hook is None:  # a module of an unpatched model that shares the config, or a vision module
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    session, layer = hook
    return session.attend(layer, module, query, key, value, attention_mask, scaling, kwargs, sdpa_attention_forward)


def vision_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Vision-tower attention, unchanged; on the layers dual-stream reads, the patch scores are recorded on the way."""
    hook = getattr(module, VISION_ATTR, None)
    if hook is not None:
        hook(module, query, key, attention_mask, scaling if scaling is not None else module.scaling)
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  **kwargs)


class AttrRemover:
    """A hook-handle look-alike: ``remove()`` deletes an attribute the patch set on some objects (module tags,
    instance attributes that shadow a class method), so unpatch treats them like any other hook."""

    def __init__(self, objects, name):
        self.objects, self.name = list(objects), name

    def remove(self):
        for obj in self.objects:
            obj.__dict__.pop(self.name, None)


_registered = False


def ensure_registered():
    global _registered
    if _registered:
        return
    AttentionInterface.register(TEXT_IMPL, text_attention)
    AttentionInterface.register(VISION_IMPL, vision_attention)
    AttentionMaskInterface.register(TEXT_IMPL, sdpa_mask)
    AttentionMaskInterface.register(VISION_IMPL, sdpa_mask)
    _registered = True
