"""The patch/unpatch machinery and one small adapter per model family."""

from .adapter import FamilyAdapter, UnsupportedModelError, adapter_for, register, supported_model_types
from .api import PatchHandle, get_patch, is_patched, patch, patched, record_attention, unpatch

__all__ = ["patch", "unpatch", "patched", "record_attention", "is_patched", "get_patch", "PatchHandle",
           "FamilyAdapter", "register", "adapter_for", "supported_model_types", "UnsupportedModelError"]
