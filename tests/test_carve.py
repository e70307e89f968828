"""CARVE pipeline against an independent re-implementation of the official algorithm (eager attention maps from a
cache-free greedy loop, one prompt at a time), plus its input checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import vlmfix
from vlmfix.testing import tiny_llava

IMAGE_SIZE = 56  # 4x4 = 16 visual tokens


@pytest.fixture(scope="module")
def model_and_processor():
    return tiny_llava(seed=1, image_size=IMAGE_SIZE, num_layers=3, init_std=0.3)


def _image(seed=0):
    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand(40, 48, 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(arr)


def _official_maps(model, processor, image, text, layers, max_new_tokens):
    """Per step (L, Nv) last-row attention averaged over heads, from full eager forwards without a KV cache."""
    prompt = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                                                          {"type": "text", "text": text}]}],
                                           add_generation_prompt=True, tokenize=False)
    inputs = processor(images=[image], text=[prompt], return_tensors="pt")
    ids = inputs["input_ids"]
    eos = processor.tokenizer.eos_token_id
    maps = []
    model.set_attn_implementation("eager")
    try:
        for _ in range(max_new_tokens):
            with torch.no_grad():
                out = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=inputs["pixel_values"],
                            output_attentions=True, use_cache=False)
            att = out.attentions
            visual = ids[0] == model.config.image_token_id
            maps.append(torch.stack([att[l][0, :, -1, :][:, visual].mean(0) for l in layers]).double())
            nxt = out.logits[0, -1].argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
            if int(nxt) == eos:
                break
    finally:
        model.set_attn_implementation("sdpa")
    return maps


def _official_saliency(q_maps, g_maps, grid, image_hw, mode, lam):
    if mode == "last_token":
        pairs, weights = [(q_maps[-1], g_maps[-1])], [1.0]
    else:
        n = min(len(q_maps), len(g_maps))
        pairs, weights = list(zip(q_maps[:n], g_maps[:n])), [t + 1.0 for t in range(n)]
    total = torch.zeros(image_hw, dtype=torch.float64)
    for (q, g), w in zip(pairs, weights):
        for layer in range(q.shape[0]):
            ratio = (q[layer] / (g[layer] + lam)).view(1, 1, *grid)
            up = F.interpolate(ratio, size=image_hw, mode="bilinear", align_corners=False)[0, 0]
            total += w * up
    return total


@pytest.mark.parametrize("mode", ["last_token", "all_steps"])
def test_saliency_matches_official_algorithm(model_and_processor, mode):
    model, processor = model_and_processor
    image = _image()
    cfg = vlmfix.CARVE(layers=(1, 2), step_mode=mode, max_new_tokens=4, top_p=0.4, max_regions=2)
    result = vlmfix.carve(model, processor, image, "is there a dog", config=cfg)
    suffix = " " + cfg.answer_suffix
    q_maps = _official_maps(model, processor, image, "is there a dog" + suffix, cfg.layers, 4)
    g_maps = _official_maps(model, processor, image, cfg.general_prompt + suffix, cfg.layers, 4)
    expected = _official_saliency(q_maps, g_maps, (4, 4), (image.height, image.width), mode, cfg.lam)
    torch.testing.assert_close(result.saliency.double(), expected, rtol=2e-4, atol=1e-6)
    # the mask keeps about top_p of the pixels, in at most max_regions regions, and the crop is its bounding box
    kept = result.mask.float().mean().item()
    assert 0 < kept <= cfg.top_p + 0.05
    assert result.refined_image.size[0] >= 1 and result.answer is not None
    assert not vlmfix.is_patched(model)


def test_carve_rejects_bad_input(model_and_processor):
    model, processor = model_and_processor
    with pytest.raises(ValueError, match="non-empty question"):
        vlmfix.carve(model, processor, _image(), "  ")
    with pytest.raises(TypeError, match="PIL image"):
        vlmfix.carve(model, processor, "photo.jpg", "what is it")
    with pytest.raises(ValueError, match="step_mode"):
        vlmfix.CARVE(step_mode="middle")
