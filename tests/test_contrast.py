"""The optional image-free logit contrast (PAI / PAINT's second stream) against a cache-free re-computation."""

from __future__ import annotations

import contextlib

import pytest
import torch

import vlmfix
from families import BUILDERS


def _manual(model, inputs, image_token_id, gamma, cutoff, steps):
    """Greedy decoding where every step recomputes both streams from scratch (no cache, no logits processor)."""
    ids = inputs["input_ids"]
    text_ids = ids[:, ids[0] != image_token_id]
    out = []
    handle = vlmfix.get_patch(model)
    for _ in range(steps):
        with torch.no_grad():
            # use_cache=False: a patched model treats the longer prompt as the next step of the same generation
            img = model(input_ids=ids, pixel_values=inputs["pixel_values"], use_cache=False).logits[:, -1]
            img = img.float().log_softmax(-1)
            with handle.session.suspended() if handle else contextlib.nullcontext():
                txt = model(input_ids=text_ids).logits[:, -1].float().log_softmax(-1)
        mixed = gamma * (img - txt) + txt
        mixed[img < img.max() + torch.log(torch.tensor(cutoff))] = float("-inf")
        nxt = mixed.argmax(-1, keepdim=True)
        out.append(int(nxt))
        ids, text_ids = torch.cat([ids, nxt], 1), torch.cat([text_ids, nxt], 1)
    return out


@pytest.mark.parametrize("methods", [(), ("dual_stream",)])
def test_contrast_matches_cache_free_reference(methods):
    t = BUILDERS["llava"]()
    with torch.no_grad():  # weights spread enough that answers depend on the image
        g = torch.Generator().manual_seed(0)
        for p in t.model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    inputs = {k: v for k, v in t.inputs(((3, 4),), seed=4).items() if k != "attention_mask"}
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    gamma = 3.0
    with vlmfix.patched(t.model, *methods):
        contrast = vlmfix.ImageFreeContrast(t.model, inputs, gamma=gamma)
        with torch.no_grad():
            got = t.model.generate(**inputs, max_new_tokens=5, do_sample=False, pad_token_id=0,
                                   logits_processor=[contrast])[0, inputs["input_ids"].shape[1]:].tolist()
        expected = _manual(t.model, inputs, t.image_token_id, gamma, 0.1, 5)
        plain = t.model.generate(**inputs, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert got == expected
    assert got != plain[0, inputs["input_ids"].shape[1]:].tolist()  # the contrast changed the answer


def test_contrast_rejects_bad_settings():
    t = BUILDERS["llava"]()
    with pytest.raises(ValueError, match="gamma"):
        vlmfix.ImageFreeContrast(t.model, t.inputs(), gamma=0.5)
    q = BUILDERS["qwen2_vl"]()
    with pytest.raises(NotImplementedError, match="M-RoPE"):
        vlmfix.ImageFreeContrast(q.model, q.inputs())
