"""vlmfix: training-free object-hallucination mitigation for Hugging Face vision-language models.

``vlmfix.patch(model, "var")`` re-weights the language model's attention toward the image (VAR, VHR, dual-stream,
composable); ``vlmfix.carve(model, processor, image, question)`` runs the CARVE pipeline; ``vlmfix.unpatch`` gives
the original model back.
"""

from . import heads
from .config import CARVE, VAR, VHR, DualStream, method_from
from .patches import (PatchHandle, UnsupportedModelError, get_patch, is_patched, patch, patched, record_attention,
                      supported_model_types, unpatch)


def carve(model, processor, image, question, config: CARVE | None = None, **kwargs):
    """CARVE's three passes (question, general, refined image); see ``vlmfix.pipelines.carve``."""
    from .pipelines.carve import carve as _carve

    return _carve(model, processor, image, question, config=config, **kwargs)


def __getattr__(name):
    if name == "ImageFreeContrast":  # imported lazily: it pulls in generation utilities
        from .pipelines.contrast import ImageFreeContrast

        return ImageFreeContrast
    raise AttributeError(f"module 'vlmfix' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = ["patch", "unpatch", "patched", "record_attention", "is_patched", "get_patch", "carve", "VAR", "VHR",
           "DualStream", "CARVE", "method_from", "heads", "PatchHandle", "UnsupportedModelError",
           "supported_model_types", "ImageFreeContrast", "__version__"]
