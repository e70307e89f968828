"""Which model the demo serves: the embedded testbed (offline), a tiny random one (smoke tests), or any HF model.

Kept apart from the CLI so a notebook can do ``build_app(*load("llava-hf/llava-1.5-7b-hf"))`` without click.
"""

from __future__ import annotations

TESTBED, TINY = "testbed", "tiny"


class LoadError(RuntimeError):
    """The model could not be loaded; the message says what to do instead."""


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str):
    """``auto``: bfloat16 on a GPU that supports it (half the memory, the dtype these models ship in), else fp32."""
    import torch

    if dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16 if device.startswith(("cuda", "mps")) else torch.float32
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
    except KeyError:
        raise LoadError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16") from None


def load(spec: str = TESTBED, device: str = "auto", dtype: str = "auto"):
    """``(model, processor, display name)`` for ``spec``: ``testbed``, ``tiny`` or a Hugging Face id / local path."""
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    if spec == TESTBED:
        from ..testbed import load_model

        try:
            model, processor = load_model(device, torch_dtype)
        except FileNotFoundError as exc:
            raise LoadError(f"{exc}\nTo try the demo without it: `vlmfix demo --model tiny` (random weights, for a "
                            "smoke test) or `vlmfix demo --model llava-hf/llava-1.5-7b-hf`.") from None
        return model, processor, "vlmfix testbed LLaVA"
    if spec == TINY:
        from ..testing import tiny_llava

        model, processor = tiny_llava(image_size=112, patch_size=14, hidden_size=64, num_layers=4)
        return model.to(device, torch_dtype), processor, "tiny random LLaVA (random weights: gibberish answers)"
    model, processor = _load_hf(spec, device, torch_dtype)
    return model, processor, spec


def _load_hf(spec, device, torch_dtype):
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    from ..patches import supported_model_types

    try:
        config = AutoConfig.from_pretrained(spec)
    except OSError as exc:
        raise LoadError(f"could not load a model config from {spec!r}: {exc}") from None
    if config.model_type not in supported_model_types():
        raise LoadError(f"{spec} is a {config.model_type!r} model; vlmfix supports "
                        f"{', '.join(supported_model_types())}")
    processor = AutoProcessor.from_pretrained(spec)
    model = AutoModelForImageTextToText.from_pretrained(spec, dtype=torch_dtype).to(device).eval()
    if hasattr(processor, "tokenizer"):
        processor.tokenizer.padding_side = "left"
    return model, processor


__all__ = ["load", "LoadError", "resolve_device", "resolve_dtype", "TESTBED", "TINY"]
