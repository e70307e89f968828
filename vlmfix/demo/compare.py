"""Baseline vs. mitigated answers for one picture and prompt, without any user interface.

Everything the demo shows comes from here, so it can be tested without a browser: both answers (greedy, so the same
inputs always give the same answer), how long each took, where each looked (heat maps as arrays) and, for annotated
pictures, which mentioned objects are not in the picture.

A patch lives on the model object, so two requests that share one loaded model must not interleave their
patch -> generate -> unpatch sequences: request A's ``unpatch`` would strip request B's methods mid-answer. Every
side of every comparison therefore runs under one lock per model (``model_lock``). Answers stream token by token
through ``TextIteratorStreamer`` from a worker thread; the lock is taken inside that thread, so a comparison whose
reader went away (a closed browser tab) still finishes and releases it.
"""

from __future__ import annotations

import collections
import contextlib
import io
import threading
import time
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .. import patches as _patches
from ..config import CARVE
from . import heatmap as hm
from .objects import Mention, Truth

MAX_PIXELS = 40_000_000  # a 40 MP photo is plenty; larger ones are almost always a mistake (or a decompression bomb)
MAX_PROMPT_CHARS = 2000
MAX_NEW_TOKENS = 512


class DemoInputError(ValueError):
    """A problem with what the user supplied; its message is shown as is, never with a traceback."""


# ------------------------------------------------------------------------------------------------------ locking

_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model) -> threading.RLock:
    """The one lock that serialises patch state changes and generation on ``model`` (created on first use)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


# ------------------------------------------------------------------------------------------------------ inputs

def load_image(source) -> Image.Image:
    """An RGB ``PIL.Image`` from a path, bytes, numpy array or image; friendly ``DemoInputError`` otherwise."""
    if source is None:
        raise DemoInputError("Please upload an image or pick one of the examples.")
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, np.ndarray):
        if source.ndim not in (2, 3) or source.size == 0:
            raise DemoInputError(f"That array is not an image (shape {source.shape}).")
        image = Image.fromarray(source.astype(np.uint8) if source.dtype != np.uint8 else source)
    else:
        data = source if isinstance(source, (bytes, bytearray)) else None
        try:
            image = Image.open(io.BytesIO(data) if data is not None else Path(source))
        except (UnidentifiedImageError, OSError, ValueError):
            raise DemoInputError("That file is not an image this demo can read. Please upload a PNG, JPEG or WebP "
                                 "picture.") from None
        except Image.DecompressionBombError:
            raise DemoInputError(_too_big_message()) from None
    w, h = image.size
    if w * h > MAX_PIXELS:
        raise DemoInputError(_too_big_message(w, h))
    if w < 2 or h < 2:
        raise DemoInputError(f"That image is only {w}x{h} pixels; please use a real picture.")
    try:
        return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        raise DemoInputError("That image could not be decoded (truncated or corrupt file?).") from None


def _too_big_message(w=None, h=None) -> str:
    size = f" ({w}x{h})" if w else ""
    return (f"That image is too large{size}: the limit is {MAX_PIXELS // 1_000_000} megapixels. The model resizes "
            "pictures to a few hundred pixels anyway, so a smaller copy gives the same answer.")


def check_prompt(prompt) -> str:
    prompt = (prompt or "").strip()
    if not prompt:
        raise DemoInputError("Please type a prompt, e.g. \"Please describe this image in detail.\"")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise DemoInputError(f"The prompt is {len(prompt)} characters long; please keep it under {MAX_PROMPT_CHARS}.")
    return prompt


def format_prompt(processor, prompt: str) -> str:
    """The model's own chat format when the processor has one, else the LLaVA-1.5 convention."""
    if getattr(processor, "chat_template", None):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    token = getattr(processor, "image_token", None) or "<image>"
    return f"USER: {token}\n{prompt} ASSISTANT:"


def build_inputs(model, processor, image: Image.Image, prompt: str) -> dict:
    """Processor outputs on the model's device, floating tensors in the model's dtype."""
    enc = processor(images=[image], text=[format_prompt(processor, prompt)], return_tensors="pt")
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    return {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) if hasattr(v, "to") else v
            for k, v in enc.items()}


# ------------------------------------------------------------------------------------------------------ results

@dataclass
class SideResult:
    """One column of the comparison."""

    label: str
    methods: tuple
    text: str
    token_ids: list  # everything generate produced after the prompt (end-of-sequence token included)
    seconds: float
    n_tokens: int = 0  # answer tokens, special tokens not counted
    heatmap: np.ndarray | None = None  # (rows, cols) mean attention per image patch, answer tokens x layers
    image_share: float | None = None  # mean share of the answer's attention that went to image tokens
    view: Image.Image | None = None  # the picture as the model saw it (what the heat map lies over)
    mentions: list[Mention] = field(default_factory=list)
    hallucinated: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    heat_kind: str = "attention"  # or "saliency" (CARVE's map: a ratio, never put on the attention colour scale)


@dataclass
class Progress:
    """A streaming snapshot of one side: text so far, seconds since the model was free, and the result when done."""

    text: str = ""
    seconds: float | None = None  # None while waiting for another request to release the model
    result: SideResult | None = None

    @property
    def done(self) -> bool:
        return self.result is not None


@dataclass
class CompareResult:
    prompt: str
    baseline: SideResult
    mitigated: SideResult

    def heat_scale(self) -> tuple[float, float]:
        """One brightness scale for both maps, so 'brighter' means 'more attention' across the two columns."""
        return shared_scale(self.baseline, self.mitigated)

    def overlays(self) -> tuple[Image.Image | None, Image.Image | None]:
        scale = self.heat_scale()
        return side_overlay(self.baseline, scale), side_overlay(self.mitigated, scale)


def shared_scale(*sides: SideResult) -> tuple[float, float]:
    """One (low, high) colour range for all maps: the 1st and 99th percentiles, so a single attention-sink patch
    does not wash the rest of the map out."""
    values = [s.heatmap.ravel() for s in sides
              if s is not None and s.heatmap is not None and s.heat_kind == "attention"]
    if not values:
        return 0.0, 1.0
    lo, hi = np.percentile(np.concatenate(values), [1, 99])
    return float(lo), float(hi)


def side_overlay(side: SideResult | None, scale: tuple[float, float] | None = None) -> Image.Image | None:
    if side is None or side.heatmap is None or side.view is None:
        return None
    if side.heat_kind != "attention" or scale is None:
        scale = shared_scale(side) if side.heat_kind == "attention" else None  # None: the map's own range
    return hm.overlay(side.view, side.heatmap, scale=scale)


# ------------------------------------------------------------------------------------------------------ running

def stream_side(model, processor, image, prompt, methods=(), *, label=None, max_new_tokens: int = 64,
                truth: Truth | None = None, layers=None) -> Iterator[Progress]:
    """Generate one side, yielding ``Progress`` per decoded chunk; the last one carries the ``SideResult``."""
    methods = tuple(methods or ())
    label = label or ("mitigated" if methods else "baseline")
    image = load_image(image)
    prompt = check_prompt(prompt)
    max_new_tokens = int(max(1, min(MAX_NEW_TOKENS, max_new_tokens)))
    if any(isinstance(m, CARVE) for m in methods):
        yield from _stream_carve(model, processor, image, prompt, methods, label, max_new_tokens, truth)
        return
    inputs = build_inputs(model, processor, image, prompt)
    from transformers import TextIteratorStreamer

    tokenizer = getattr(processor, "tokenizer", processor)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    box: dict = {}

    def work():
        try:
            with model_lock(model):
                box["t0"] = time.perf_counter()
                box["out"], box["maps"], box["notes"] = _generate(model, inputs, methods, max_new_tokens, streamer,
                                                                  layers)
                box["t1"] = time.perf_counter()
        except BaseException as exc:  # handed to the reader below, which re-raises it in the request's thread
            box["error"] = exc
            streamer.end()

    worker = threading.Thread(target=work, name=f"vlmfix-demo-{label}", daemon=True)
    worker.start()
    yield Progress()
    text = ""
    for chunk in streamer:
        text += chunk
        yield Progress(text=text, seconds=time.perf_counter() - box.get("t0", time.perf_counter()))
    worker.join()
    if "error" in box:
        raise box["error"]
    prompt_len = inputs["input_ids"].shape[1]
    ids = [int(t) for t in box["out"][0, prompt_len:].tolist()]
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    final = tokenizer.decode(ids, skip_special_tokens=True).strip()
    result = SideResult(label=label, methods=methods, text=final, token_ids=ids, seconds=box["t1"] - box["t0"],
                        n_tokens=sum(t not in special for t in ids), notes=box["notes"])
    _attach_heatmap(result, box["maps"], model, inputs, image, processor)
    _attach_truth(result, truth)
    yield Progress(text=final, seconds=result.seconds, result=result)


_ALREADY_PATCHED = ("The loaded model is already patched outside the demo; unpatch it (vlmfix.unpatch) so the "
                    "baseline column really is the unmodified model.")


def _generate(model, inputs, methods, max_new_tokens, streamer, layers):
    """patch -> record -> generate -> unpatch; the caller holds the model's lock."""
    if _patches.is_patched(model):
        raise DemoInputError(_ALREADY_PATCHED)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ctx = _patches.patched(model, *methods) if methods else contextlib.nullcontext()
        with ctx, _patches.record_attention(model, layers=layers) as rec:
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                 streamer=streamer)
    notes = list(dict.fromkeys(str(w.message) for w in caught if str(w.message).startswith("vlmfix")))
    return out, rec.visual_maps(row=0), notes


def _stream_carve(model, processor, image, prompt, methods, label, max_new_tokens, truth):
    """CARVE runs three passes itself and returns only the final answer, so this side does not stream. Its heat map
    is its own contrastive saliency (question attention over general attention), the map that chose the regions
    the final pass saw, on its own colour scale: it is a ratio, not an attention share."""
    import dataclasses

    import vlmfix

    cfg = dataclasses.replace(next(m for m in methods if isinstance(m, CARVE)), max_new_tokens=max_new_tokens)
    yield Progress()
    with model_lock(model):
        if _patches.is_patched(model):
            raise DemoInputError(_ALREADY_PATCHED)
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = vlmfix.carve(model, processor, image, prompt, config=cfg)
        seconds = time.perf_counter() - t0
    notes = list(dict.fromkeys(str(w.message) for w in caught if str(w.message).startswith("vlmfix")))
    notes.append("CARVE answers after its three passes (no streaming); the heat map is its saliency map, on its own "
                 "colour scale.")
    result = SideResult(label=label, methods=(cfg,), text=out.answer.strip(), token_ids=[], seconds=seconds,
                        view=image, notes=notes, heat_kind="saliency")
    saliency = getattr(out, "saliency", None)
    if saliency is not None:
        result.heatmap = saliency.detach().float().cpu().numpy()
    _attach_truth(result, truth)
    yield Progress(text=result.text, seconds=seconds, result=result)


def _attach_heatmap(result: SideResult, maps, model, inputs, image, processor):
    vector = hm.mean_visual_attention(maps)
    result.view = hm.model_view(image, processor)
    if vector is None:
        result.notes.append("No attention over the image was recorded for this answer, so there is no heat map.")
        return
    shape = hm.grid_shape(vector.shape[0], model=model, inputs=inputs, image_size=result.view.size[::-1])
    result.heatmap = hm.to_grid(vector, shape)
    result.image_share = float(vector.sum())


def _attach_truth(result: SideResult, truth: Truth | None):
    if truth is not None:
        result.mentions, result.hallucinated = truth.judge(result.text)


def _last(iterator):
    """The final item of a generator (run to its end)."""
    tail = collections.deque(iterator, maxlen=1)
    if not tail:
        raise RuntimeError("the comparison produced no result")
    return tail[0]


def run_side(*args, **kwargs) -> SideResult:
    """``stream_side`` run to the end."""
    return _last(stream_side(*args, **kwargs)).result


def stream_compare(model, processor, image, prompt, methods, *, max_new_tokens: int = 64, truth: Truth | None = None,
                   layers=None) -> Iterator[tuple[Progress, Progress]]:
    """Baseline, then mitigated (one model cannot be patched and unpatched at once), as (baseline, mitigated)
    progress pairs; the final pair carries both results."""
    if not methods:
        raise DemoInputError("Tick at least one method for the mitigated column.")
    image = load_image(image)
    prompt = check_prompt(prompt)
    base = Progress()
    for base in stream_side(model, processor, image, prompt, (), label="baseline", max_new_tokens=max_new_tokens,
                            truth=truth, layers=layers):
        yield base, Progress()
    mit = Progress()
    for mit in stream_side(model, processor, image, prompt, methods, label="mitigated",
                           max_new_tokens=max_new_tokens, truth=truth, layers=layers):
        yield base, mit


def compare(model, processor, image, prompt, methods, *, max_new_tokens: int = 64, truth: Truth | None = None,
            layers=None) -> CompareResult:
    """Both sides, run to completion: the testable core of the demo."""
    base, mit = _last(stream_compare(model, processor, image, prompt, methods, max_new_tokens=max_new_tokens,
                                     truth=truth, layers=layers))
    return CompareResult(prompt=check_prompt(prompt), baseline=base.result, mitigated=mit.result)


__all__ = ["compare", "stream_compare", "stream_side", "run_side", "CompareResult", "SideResult", "Progress",
           "DemoInputError", "model_lock", "load_image", "check_prompt", "build_inputs", "format_prompt",
           "shared_scale", "side_overlay", "MAX_PIXELS"]
