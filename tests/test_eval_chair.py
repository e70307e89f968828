"""CHAIR on hand-worked captions: synonyms, bigrams, plurals, the toilet-seat rule, repeats in CHAIR_i."""

import json

import pytest

from vlmfix.eval.chair import CaptionParser, ChairEvaluator, coco_vocabulary
from vlmfix.eval.errors import EvalInputError
from vlmfix.eval.text import word_tokenize
from vlmfix.testing import write_tiny_coco


@pytest.fixture(scope="module")
def parser():
    return CaptionParser(coco_vocabulary())


def nodes(parser, caption):
    return parser(caption)[1]


def test_reference_table_shape():
    v = coco_vocabulary()
    assert len(v.categories) == 80
    assert len(v.inverse) == 403
    assert v.inverse["televison"] == "tv" and v.inverse[" motor bike"] == "motorcycle"


@pytest.mark.parametrize("caption,expected", [
    ("A man rides a motorbike past two giraffes.", ["person", "motorcycle", "giraffe"]),
    ("A man on a motor bike.", ["person"]),                       # quirk: " motor bike" never matches
    ("A slice of cheesecake and a cupcake.", ["cake"]),             # quirk: " cheesecake" never matches
    ("A hot dog, a wine glass and a teddy bear.", ["hot dog", "wine glass", "teddy bear"]),
    ("Hot dogs and wine glasses.", ["hot dog", "wine glass"]),     # plurals merge after lemmatising
    ("A baby elephant next to an adult giraffe.", ["elephant", "giraffe"]),  # not "person"
    ("A passenger train at the station.", ["train"]),
    ("He wears a bow tie.", ["tie"]),
    ("A toilet seat.", ["toilet"]),
    ("A toilet next to a seat and a stool.", ["toilet", "chair"]),  # every "seat" dropped when a toilet is there
    ("A seat and a stool.", ["chair", "chair"]),
    ("Knives, forks and mice on desks.", ["knife", "fork", "mouse", "dining table"]),
    ("Children and people near the buses.", ["person", "person", "bus"]),
    ("The TV and a television.", ["tv", "tv"]),
    ("A potted plant by a parking meter.", ["potted plant", "parking meter"]),
    ("A man skiing down a hill.", ["person", "skis"]),              # VBG → verb lemma, as the tagger does
    ("A stop sign, a fire hydrant and traffic lights.", ["stop sign", "fire hydrant", "traffic light"]),
    ("", []),
])
def test_mentions(parser, caption, expected):
    assert nodes(parser, caption) == expected


def test_tokenizer_treebank_rules():
    assert word_tokenize("a dog's bowl isn't here. a cat (white) sits, too!") == [
        "a", "dog", "'s", "bowl", "is", "n't", "here", ".", "a", "cat", "(", "white", ")", "sits", ",", "too", "!"]
    assert word_tokenize("1. a dog. 2. a cat.") == ["1.", "a", "dog", ".", "2.", "a", "cat", "."]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("chair")
    ann, _ = write_tiny_coco(root, {1: ["dog"], 2: ["toilet"], 3: ["cat", "cat"]},
                             {1: ["A man walking his dog."], 2: ["A woman in a bathroom."], 3: ["Two cats."]},
                             image_size=8)
    return root, ann


def test_hand_worked_metrics(world, tmp_path):
    _, ann = world
    ev = ChairEvaluator(ann, cache_dir=tmp_path)
    assert ev.gt[1] == {"dog", "person"} and ev.gt[2] == {"toilet", "person"} and ev.gt[3] == {"cat"}
    res = ev.score([
        {"image_id": 1, "caption": "A man and his puppies sit next to a toilet seat. The dogs look at the cat "
                                   "and another cat."},
        {"image_id": 2, "caption": "A toilet next to a seat and a woman."},
    ])
    c1, c2 = res["captions"]
    assert c1["mentioned"] == ["person", "dog", "toilet", "dog", "cat", "cat"]
    assert c1["hallucinated"] == ["toilet", "cat", "cat"]
    assert c2["mentioned"] == ["toilet", "person"] and c2["hallucinated"] == []
    assert c1["gt"] == ["dog", "person"]
    m = res["metrics"]
    assert m["chair_s"] == pytest.approx(1 / 2)
    assert m["chair_i"] == pytest.approx(3 / 8)         # repeats counted
    assert m["recall"] == pytest.approx(4 / 4)
    assert m["precision"] == pytest.approx(4 / 6)
    assert m["f1"] == pytest.approx(2 * (4 / 6) / (4 / 6 + 1))
    assert m["len"] == pytest.approx((21 + 10) / 2)     # tokens after the bigram merge, punctuation included


def test_cache_roundtrip(world, tmp_path):
    from vlmfix.eval import chair as C

    _, ann = world
    C._MEMORY.clear()
    a = ChairEvaluator(ann, cache_dir=tmp_path, use_cache=True)
    assert list(tmp_path.glob("gt-*.pkl"))
    C._MEMORY.clear()
    b = ChairEvaluator(ann, cache_dir=tmp_path)
    assert a.gt == b.gt


def test_custom_synonyms(tmp_path):
    ann, _ = write_tiny_coco(tmp_path, {1: ["red cube"], 2: ["blue ball"]}, {1: ["a red block."]}, image_size=8)
    syn = tmp_path / "syn.json"
    syn.write_text(json.dumps({"red cube": ["red block", "crimson cube"], "blue ball": ["blue spheres"]}))
    ev = ChairEvaluator(ann, synonyms=syn, cache_dir=tmp_path)
    assert ev.gt[1] == {"red cube"}
    res = ev.score([{"image_id": 1, "caption": "A crimson cube and a blue sphere and red blocks."}])
    assert res["captions"][0]["mentioned"] == ["red cube", "blue ball", "red cube"]  # listed plural, matched lemma
    assert res["captions"][0]["hallucinated"] == ["blue ball"]


def test_unknown_category_is_a_clear_error(tmp_path):
    ann, _ = write_tiny_coco(tmp_path, {1: ["spaceship"]}, {}, image_size=8)
    with pytest.raises(EvalInputError, match="spaceship.*--synonyms"):
        ChairEvaluator(ann, cache_dir=tmp_path)


def test_unknown_image_id_is_a_clear_error(world, tmp_path):
    _, ann = world
    ev = ChairEvaluator(ann, cache_dir=tmp_path)
    with pytest.raises(EvalInputError, match="image_id 99"):
        ev.score([{"image_id": 99, "caption": "a dog"}])
