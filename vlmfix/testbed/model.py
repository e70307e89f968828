"""Tokenizer, processor and LLaVA configuration of the testbed VLM, and the loader for the shipped weights.

The model is a stock ``LlavaForConditionalGeneration`` (CLIP vision tower, two-layer projector, Llama decoder with
grouped-query attention) so that every code path vlmfix patches in a real LLaVA is exercised: the penultimate-layer
feature selection with the CLS token dropped, image-token expansion by the processor, KV-cached generation.
"""

from __future__ import annotations

from pathlib import Path

import torch

IMAGE_TOKEN = "<image>"
SPECIALS = ["<pad>", "<s>", "</s>", IMAGE_TOKEN]  # ids 0..3 in this order
IMAGE_SIZE, PATCH = 112, 14
NUM_IMAGE_TOKENS = (IMAGE_SIZE // PATCH) ** 2  # CLS dropped by the "default" strategy
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set parts = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}{%- set parts = message['content'] -%}{%- endif -%}"
    "{%- if message['role'] == 'user' -%}{{ 'USER: ' }}"
    "{%- for p in parts if p['type'] == 'image' %}<image>\n{% endfor -%}"
    "{%- for p in parts if p['type'] == 'text' %}{{ p['text'] }}{% endfor %} ASSISTANT:"
    "{%- elif message['role'] == 'assistant' -%}"
    "{%- for p in parts if p['type'] == 'text' %} {{ p['text'] }}{% endfor %}</s>"
    "{%- endif -%}{%- endfor -%}"
)
ASSET_DIR = Path(__file__).resolve().parent / "assets" / "model"


def prompt_text(question: str) -> str:
    """The single-turn prompt the testbed model was trained on."""
    return f"USER: {IMAGE_TOKEN}\n{question} ASSISTANT:"


def build_tokenizer(texts, vocab_size: int = 1024):
    """Byte-level BPE trained on the world's own text, so every word of the world is one or two tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token=None, model_max_length=512, padding_side="left")
    fast.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_processor(tokenizer):
    from transformers import CLIPImageProcessor, LlavaProcessor

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_resize=True, do_center_crop=True, do_normalize=True, image_mean=CLIP_MEAN, image_std=CLIP_STD)
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH,
                          vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE,
                          image_token=IMAGE_TOKEN, num_additional_image_tokens=1)


def build_config(vocab_size: int, *, text_layers=8, text_hidden=384, text_ffn=768, heads=8, kv_heads=4,
                 vision_layers=6, vision_hidden=256, vision_ffn=1024, vision_heads=4):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(hidden_size=vision_hidden, intermediate_size=vision_ffn,
                              num_hidden_layers=vision_layers, num_attention_heads=vision_heads,
                              image_size=IMAGE_SIZE, patch_size=PATCH, projection_dim=vision_hidden,
                              hidden_act="quick_gelu")
    text = LlamaConfig(vocab_size=vocab_size, hidden_size=text_hidden, intermediate_size=text_ffn,
                       num_hidden_layers=text_layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                       max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=False,
                       pad_token_id=0, bos_token_id=1, eos_token_id=2)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=3,
                      image_seq_length=NUM_IMAGE_TOKENS, vision_feature_layer=-2,
                      vision_feature_select_strategy="default", projector_hidden_act="gelu")
    cfg.pad_token_id = 0
    return cfg


def build_model(vocab_size: int, seed: int = 0, **kw):
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(build_config(vocab_size, **kw))
    gc = model.generation_config
    gc.bos_token_id, gc.eos_token_id, gc.pad_token_id = 1, 2, 0
    gc.do_sample, gc.max_new_tokens = False, 96
    return model


def load_model(device="cpu", dtype=torch.float32, path=None):
    """Load the shipped testbed VLM: ``(model, processor)``, eval mode, on ``device`` in ``dtype``."""
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    path = Path(path) if path is not None else ASSET_DIR
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"testbed model assets not found in {path}; reinstall vlmfix with package data or rebuild them with "
            "`vlmfix testbed train --out DIR` and pass path=DIR")
    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=dtype).to(device).eval()
    processor = LlavaProcessor.from_pretrained(path)
    processor.tokenizer.padding_side = "left"
    return model, processor
