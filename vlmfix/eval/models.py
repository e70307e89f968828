"""Loading the model under evaluation: the offline testbed, a Hugging Face hub id or a local checkpoint.

Loading is the one step that differs between users' machines (device, dtype, sharding over several GPUs), so it is
isolated here and every choice is returned for the protocol record.
"""

from __future__ import annotations

from pathlib import Path

from .errors import EvalInputError

DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
          "bfloat16": "bfloat16", "bf16": "bfloat16", "auto": "auto"}


def resolve_dtype(name: str | None, device: str):
    """A torch dtype from a name; ``auto`` = bfloat16 on CUDA, float32 on CPU (half precision is slow on CPU)."""
    import torch

    name = (name or "auto").lower()
    if name not in DTYPES:
        raise EvalInputError(f"unknown dtype {name!r}; expected one of {sorted(set(DTYPES))}")
    name = DTYPES[name]
    if name == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    return getattr(torch, name)


def resolve_device(device: str | None, local_rank: int = 0) -> str:
    """``auto`` = the process's GPU when there is one (one GPU per rank under ``accelerate launch``), else CPU."""
    import torch

    if device in (None, "auto"):
        return f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and torch.cuda.is_available():
        return f"cuda:{local_rank}"
    return device


def has_vision(config) -> bool:
    """Whether a model config describes an image-taking model (a vision tower config or an image token)."""
    for attr in ("vision_config", "visual", "vision_tower", "image_token_index", "image_token_id", "mm_vision_tower"):
        if getattr(config, attr, None) is not None:
            return True
    return False


def load_model(name: str, device: str = "cpu", dtype=None, device_map: str | None = None):
    """``(model, processor)`` in eval mode. ``testbed`` = the offline testbed VLM; anything else goes through
    ``AutoModelForImageTextToText``/``AutoProcessor`` (hub id or local path). A model without a vision part is
    refused before its weights are loaded."""
    import torch

    if dtype is None or isinstance(dtype, str):
        dtype = resolve_dtype(dtype, device)
    if name == "testbed":
        try:
            from vlmfix.testbed import load_model as testbed_load
        except ImportError:
            raise EvalInputError("the testbed model is not available in this installation yet "
                                 "(vlmfix.testbed.load_model); pass --model <hub id or local path>") from None
        try:
            model, processor = testbed_load(device=device, dtype=dtype)
        except FileNotFoundError as exc:
            raise EvalInputError(f"the testbed model cannot be loaded: {exc}") from None
        return model.eval(), processor
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    local = Path(name).exists()
    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as exc:
        where = "local path" if local else "hub id (or no network access)"
        raise EvalInputError(f"cannot load a model config from {name!r} as a {where}: {exc}") from None
    if not has_vision(config):
        raise EvalInputError(f"{name!r} ({type(config).__name__}) takes no images: its config has no vision part; "
                             "POPE/CHAIR need an image-text-to-text model such as llava-hf/llava-1.5-7b-hf")
    kwargs = {"dtype": dtype}
    if device_map:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForImageTextToText.from_pretrained(name, **kwargs)
    except ValueError as exc:
        raise EvalInputError(f"{name!r} cannot be loaded as an image-text-to-text model: {exc}") from None
    if not device_map:
        model = model.to(device)
    processor = AutoProcessor.from_pretrained(name)
    if not hasattr(processor, "image_processor"):
        raise EvalInputError(f"{name!r} has no image processor; POPE/CHAIR need a processor that takes images")
    torch.set_grad_enabled(False)
    return model.eval(), processor


def model_device(model):
    """Where inputs must go: the first parameter's device (the embedding's device under ``device_map``)."""
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        return "cpu"
