"""Tiny random-weight models of every supported family, built offline from the real HF config classes.

Each builder returns a ``Tiny`` with the model (fp32, eval) and ``inputs(lengths, pad)`` that makes a left-padded batch
whose rows are ``[text prefix][image tokens][text suffix]`` with per-row random text, the way a processor would lay
them out. Sizes are the smallest that keep every code path real (GQA, several layers, more than one image token).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import transformers as tf

VOCAB = 256
N_LAYERS = 5


@dataclass
class Tiny:
    family: str
    model: torch.nn.Module
    image_token_id: int
    n_image_tokens: int
    pixel_inputs: Callable[[int], dict]  # batch size -> pixel kwargs
    pad_token_id: int = 0
    extra: Callable[[torch.Tensor], dict] | None = None  # input_ids -> extra kwargs (e.g. token_type_ids)

    def inputs(self, prefix_suffix=((3, 4),), pad: bool = True, seed: int = 0, with_image: bool = True) -> dict:
        """Left-padded batch; ``prefix_suffix`` gives (text before image, text after image) lengths per row."""
        g = torch.Generator().manual_seed(seed)
        rows = []
        for pre, post in prefix_suffix:
            text = lambda n: torch.randint(3, VOCAB - 8, (n,), generator=g)  # noqa: E731
            img = torch.full((self.n_image_tokens if with_image else 0,), self.image_token_id)
            rows.append(torch.cat([torch.tensor([1]), text(pre), img, text(post)]))
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id)
        att = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = r
            att[i, width - len(r):] = 1
        out = {"input_ids": ids, "attention_mask": att}
        if with_image:
            with torch.random.fork_rng():  # pixels drawn from ``seed`` too: results never depend on test order
                torch.manual_seed(seed)
                out.update(self.pixel_inputs(len(rows)))
        if self.extra is not None:
            out.update(self.extra(ids))
        return out


def _llama(**kw):
    base = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=N_LAYERS,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0)
    base.update(kw)
    return tf.LlamaConfig(**base)


def _clip(**kw):
    base = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=28,
                patch_size=14, projection_dim=32)
    base.update(kw)
    return tf.CLIPVisionConfig(**base)


def _finish(model):
    torch.manual_seed(0)
    return model.eval()


def llava() -> Tiny:
    torch.manual_seed(0)
    cfg = tf.LlavaConfig(text_config=_llama(), vision_config=_clip(), image_token_index=VOCAB - 1, image_seq_length=4,
                         vision_feature_layer=-2)
    model = _finish(tf.LlavaForConditionalGeneration(cfg))
    return Tiny("llava", model, VOCAB - 1, 4, lambda b: {"pixel_values": torch.randn(b, 3, 28, 28)})


def llava_next() -> Tiny:
    torch.manual_seed(0)
    cfg = tf.LlavaNextConfig(text_config=_llama(), vision_config=_clip(), image_token_index=VOCAB - 1,
                             image_grid_pinpoints=[[28, 56]], vision_feature_layer=-2)
    model = _finish(tf.LlavaNextForConditionalGeneration(cfg))
    # a 28x56 image: base view + 2 tiles of 2x2 patches -> base 4 + unpadded 2x4 grid with a newline per row (2*5)
    n = 4 + 2 * 5
    return Tiny("llava_next", model, VOCAB - 1, n,
                lambda b: {"pixel_values": torch.randn(b, 3, 3, 28, 28), "image_sizes": torch.tensor([[28, 56]] * b)})


def _qwen_text(cls, **kw):
    base = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=N_LAYERS,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                rope_parameters=dict(rope_type="default", mrope_section=[2, 3, 3], rope_theta=10000.0))
    base.update(kw)
    return cls(**base)


def _qwen_pixels(b):
    # one 56x56 image per row: grid 1x4x4 patches of 14 px, merged 2x2 -> 4 LLM tokens
    return {"pixel_values": torch.randn(b * 16, 3 * 2 * 14 * 14), "image_grid_thw": torch.tensor([[1, 4, 4]] * b)}


def _mm_types(ids):
    return {"mm_token_type_ids": (ids == VOCAB - 1).long()}


def qwen2_vl() -> Tiny:
    torch.manual_seed(0)
    text = _qwen_text(tf.Qwen2VLTextConfig)
    vision = tf.Qwen2VLVisionConfig(depth=2, embed_dim=32, hidden_size=64, num_heads=4, patch_size=14,
                                    spatial_merge_size=2, temporal_patch_size=2, mlp_ratio=2)
    cfg = tf.Qwen2VLConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), image_token_id=VOCAB - 1,
                           video_token_id=VOCAB - 2, vision_start_token_id=VOCAB - 3, vision_end_token_id=VOCAB - 4)
    model = _finish(tf.Qwen2VLForConditionalGeneration(cfg))
    return Tiny("qwen2_vl", model, VOCAB - 1, 4, _qwen_pixels, extra=_mm_types)


def qwen2_5_vl() -> Tiny:
    torch.manual_seed(0)
    text = _qwen_text(tf.Qwen2_5_VLTextConfig)
    vision = tf.Qwen2_5_VLVisionConfig(depth=2, hidden_size=32, intermediate_size=64, out_hidden_size=64, num_heads=4,
                                       patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                                       fullatt_block_indexes=[1])
    cfg = tf.Qwen2_5_VLConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), image_token_id=VOCAB - 1,
                              video_token_id=VOCAB - 2, vision_start_token_id=VOCAB - 3, vision_end_token_id=VOCAB - 4)
    model = _finish(tf.Qwen2_5_VLForConditionalGeneration(cfg))
    return Tiny("qwen2_5_vl", model, VOCAB - 1, 4, _qwen_pixels, extra=_mm_types)


def _idefics_like(family, config_cls, vision_cls, model_cls) -> Tiny:
    torch.manual_seed(0)
    vision = vision_cls(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        image_size=28, patch_size=14)
    cfg = config_cls(text_config=_llama().to_dict(), vision_config=vision.to_dict(), image_token_id=VOCAB - 1,
                     scale_factor=2)
    model = _finish(model_cls(cfg))
    # 2x2 patches, pixel shuffle by 2 -> 1 token per image; two images (tiles) per row -> 2 tokens
    return Tiny(family, model, VOCAB - 1, 2,
                lambda b: {"pixel_values": torch.randn(b, 2, 3, 28, 28),
                           "pixel_attention_mask": torch.ones(b, 2, 28, 28, dtype=torch.bool)})


def idefics3() -> Tiny:
    return _idefics_like("idefics3", tf.Idefics3Config, tf.Idefics3VisionConfig, tf.Idefics3ForConditionalGeneration)


def smolvlm() -> Tiny:
    return _idefics_like("smolvlm", tf.SmolVLMConfig, tf.SmolVLMVisionConfig, tf.SmolVLMForConditionalGeneration)


def gemma3() -> Tiny:
    torch.manual_seed(0)
    text = tf.Gemma3TextConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=N_LAYERS,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                               sliding_window=6, pad_token_id=0)
    vision = tf.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   image_size=28, patch_size=14)
    cfg = tf.Gemma3Config(text_config=text.to_dict(), vision_config=vision.to_dict(), image_token_index=VOCAB - 1,
                          mm_tokens_per_image=4, boi_token_index=VOCAB - 3, eoi_token_index=VOCAB - 4)
    model = _finish(tf.Gemma3ForConditionalGeneration(cfg))

    def token_types(ids):
        return {"token_type_ids": (ids == VOCAB - 1).long()}

    return Tiny("gemma3", model, VOCAB - 1, 4, lambda b: {"pixel_values": torch.randn(b, 3, 28, 28)},
                extra=token_types)


BUILDERS = {"llava": llava, "llava_next": llava_next, "qwen2_vl": qwen2_vl, "qwen2_5_vl": qwen2_5_vl,
            "idefics3": idefics3, "smolvlm": smolvlm, "gemma3": gemma3}
