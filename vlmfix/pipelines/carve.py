"""CARVE as a pipeline: question and general passes in one batch, contrast their attention, refine the image, re-ask.

Differences from the official code, all deliberate:
- the question and the general pass run as one left-padded batch of two rows with the KV cache and the usual SDPA
  path; only the last query row's attention at the chosen layers is computed (``record_attention``), never an
  N x N map, and the vision tower runs once per pass instead of once per generated token;
- ``last_token`` (the paper's t_end, its best setting) is the default and is implemented;
- K is a true maximum on the number of regions (the paper's definition);
- the final pass sees the refined image only (the paper); ``final_input="both"`` gives the code's [original, refined].
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from PIL import Image

from ..config import CARVE
from ..heads import fuse_maps, refine_image, select_regions, top_p_mask
from ..patches.api import get_patch, record_attention


@dataclass
class CarveResult:
    answer: str  # the final answer, on the refined image
    baseline_answer: str  # the question pass's answer on the original image (what the model says without CARVE)
    general_answer: str
    refined_image: Image.Image
    saliency: torch.Tensor  # (H, W) fused contrast map at pixel resolution
    mask: torch.Tensor  # (H, W) bool, the kept regions
    config: CARVE
    seconds: dict = field(default_factory=dict)


def _messages(text, n_images=1):
    return [{"role": "user", "content": [*({"type": "image"} for _ in range(n_images)), {"type": "text", "text": text}]}]


def _prompt(processor, text, n_images=1):
    return processor.apply_chat_template(_messages(text, n_images), add_generation_prompt=True, tokenize=False)


def _device(model):
    return next(model.parameters()).device


def _generate(model, processor, images, prompts, max_new_tokens, **generate_kwargs):
    tokenizer = getattr(processor, "tokenizer", processor)
    tokenizer.padding_side = "left"
    inputs = processor(images=images, text=prompts, padding=True, return_tensors="pt").to(_device(model))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                             **generate_kwargs)
    new = out[:, inputs["input_ids"].shape[1]:]
    return new, tokenizer, inputs


def _n_steps(tokens, tokenizer):
    """Generated tokens up to and including the first EOS: the attention steps that belong to the answer."""
    eos = tokenizer.eos_token_id
    ids = tokens.tolist()
    return ids.index(eos) + 1 if eos is not None and eos in ids else len(ids)


def visual_grid(model, n_visual: int, image_kwargs: dict) -> tuple[int, int]:
    """(rows, cols) of the first image's visual tokens: the grid the attention maps are reshaped to."""
    grid = image_kwargs.get("image_grid_thw")
    if grid is not None:
        merge = model.config.vision_config.spatial_merge_size
        return int(grid[0][1]) // merge, int(grid[0][2]) // merge
    side = int(n_visual ** 0.5)
    return side, side  # square towers; for AnyRes/tiled layouts the first (base / first tile) square block


def carve(model, processor, image: Image.Image, question: str, config: CARVE | None = None,
          **generate_kwargs) -> CarveResult:
    """Answer ``question`` about ``image`` with CARVE. Works on a patched model too (maps then reflect the patch)."""
    cfg = config or CARVE()
    if not isinstance(image, Image.Image):
        raise TypeError(f"carve needs a PIL image, got {type(image).__name__}")
    if not question or not question.strip():
        raise ValueError("carve needs a non-empty question")
    image = image.convert("RGB")
    n_layers = len(model.get_decoder().layers)
    layers = cfg.resolve_layers(n_layers)
    suffix = f" {cfg.answer_suffix}" if cfg.answer_suffix else ""
    prompts = [_prompt(processor, question + suffix), _prompt(processor, cfg.general_prompt + suffix)]
    seconds = {}

    t0 = time.perf_counter()
    with record_attention(model, layers=layers) as rec:
        tokens, tokenizer, _ = _generate(model, processor, [image, image], prompts, cfg.max_new_tokens,
                                         **generate_kwargs)
        image_kwargs = dict(get_patch(model).session.image_kwargs)
    seconds["question_and_general"] = time.perf_counter() - t0
    steps_q, steps_g = _n_steps(tokens[0], tokenizer), _n_steps(tokens[1], tokenizer)
    q_maps = rec.visual_maps(row=0)[:steps_q]
    g_maps = rec.visual_maps(row=1)[:steps_g]
    if not q_maps or q_maps[0].shape[-1] == 0:
        raise RuntimeError("carve: no visual tokens were found in the prompt; does the processor insert the image?")

    t0 = time.perf_counter()
    n_visual = q_maps[0].shape[-1]
    rows, cols = visual_grid(model, n_visual, image_kwargs)
    q_maps = [m[:, : rows * cols].float().cpu() for m in q_maps]
    g_maps = [m[:, : rows * cols].float().cpu() for m in g_maps]
    saliency = fuse_maps(q_maps, g_maps, (rows, cols), (image.height, image.width), mode=cfg.step_mode,
                         lam=cfg.lam)
    keep = select_regions(top_p_mask(saliency, cfg.top_p), saliency, cfg.max_regions)
    refined = refine_image(image, keep)
    seconds["refine"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    images = [refined] if cfg.final_input == "refined" else [image, refined]
    final, _, _ = _generate(model, processor, [images], [_prompt(processor, question + suffix, len(images))],
                            cfg.max_new_tokens, **generate_kwargs)
    seconds["final"] = time.perf_counter() - t0
    decode = lambda t: tokenizer.decode(t, skip_special_tokens=True).strip()  # noqa: E731
    return CarveResult(answer=decode(final[0]), baseline_answer=decode(tokens[0]), general_answer=decode(tokens[1]),
                       refined_image=refined, saliency=saliency, mask=keep, config=cfg, seconds=seconds)
