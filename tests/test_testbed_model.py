"""Tokenizer / processor wiring of the testbed VLM, and the shipped weights once they exist."""

import time

import pytest

from vlmfix.testbed.model import ASSET_DIR, NUM_IMAGE_TOKENS, build_processor, build_tokenizer, prompt_text
from vlmfix.testbed.quickeval import Mentions, parse_yes_no, pope_questions
from vlmfix.testbed.text import DETAIL_PROMPT
from vlmfix.testbed.world import draw_arrays


@pytest.fixture(scope="module")
def sample():
    return draw_arrays(5, range(40))


@pytest.fixture(scope="module")
def processor(sample):
    _, _, caps, details = sample
    return build_processor(build_tokenizer([c for cs in caps for c in cs] + details + [prompt_text(DETAIL_PROMPT)]))


def test_tokenizer_round_trip(sample, processor):
    tok = processor.tokenizer
    _, _, caps, details = sample
    for text in details[:10] + [c for cs in caps[:5] for c in cs]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    specials = tok.convert_tokens_to_ids(["<pad>", "<s>", "</s>", "<image>"])
    assert specials == [0, 1, 2, 3]


def test_processor_expands_image_token(sample, processor):
    from PIL import Image

    imgs = sample[0]
    out = processor(text=prompt_text(DETAIL_PROMPT), images=Image.fromarray(imgs[0]), return_tensors="pt")
    assert int((out["input_ids"] == 3).sum()) == NUM_IMAGE_TOKENS == 64
    assert tuple(out["pixel_values"].shape) == (1, 3, 112, 112)


def test_pope_questions_and_parser():
    present = [[47, 50], [3], [18, 34, 38]]
    for setting in ("random", "popular", "adversarial"):
        qs = pope_questions(present, setting)
        assert sum(q[2] for q in qs) == sum(1 - q[2] for q in qs) == 6
    adv = [q for q in pope_questions([[47]] + present, "adversarial") if q[0] == 0 and q[2] == 0]
    assert adv[0][1] == "spoon"  # the usual partner of a cup is the adversarial negative
    assert parse_yes_no("No, there is not.") == 0 and parse_yes_no("Yes") == 1
    assert Mentions()("Two mugs and a soccer ball.") == [47, 37]


@pytest.mark.skipif(not (ASSET_DIR / "config.json").exists(), reason="testbed weights not shipped")
def test_shipped_model_generates():
    import torch
    from PIL import Image

    from vlmfix.testbed import load_model

    t = time.time()
    model, proc = load_model()
    assert time.time() - t < 30  # a few seconds on an idle machine
    assert model.config.vision_feature_layer == -2 and model.config.vision_feature_select_strategy == "default"
    imgs, scenes, _, _ = draw_arrays(20260, range(1))
    inputs = proc(text=prompt_text(DETAIL_PROMPT), images=Image.fromarray(imgs[0]), return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    text = proc.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
    assert len(text.split()) > 3
