"""POPE construction properties, the parser rule tables and the metric formulas."""

import random

import pytest

from vlmfix.eval import pope as P
from vlmfix.eval.coco import load_instances
from vlmfix.testing import write_tiny_coco

NAMES = ["person", "dog", "cat", "car", "chair", "dining table", "cup", "bottle", "bird", "horse", "apple",
         "umbrella", "orange", "elephant"]


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    rng = random.Random(1)
    images = {i: rng.sample(NAMES, rng.randint(1, 6)) for i in range(1, 41)}
    ann, _ = write_tiny_coco(tmp_path_factory.mktemp("pope"), images, image_size=8)
    return load_instances(ann / "instances_val.json"), images


def test_counts_labels_and_positives(coco):
    index, images = coco
    sets = P.build_pope(index, num_images=10, seed=3)
    eligible = {i for i, objs in images.items() if len(objs) >= 3}
    first_images = None
    for split, qs in sets.items():
        assert len(qs) == 60
        assert [q["question_id"] for q in qs] == list(range(1, 61))
        assert [q["label"] for q in qs] == ["yes", "no"] * 30
        per_image = {}
        for q in qs:
            per_image.setdefault(q["image"], []).append(q)
        assert len(per_image) == 10 and all(len(v) == 6 for v in per_image.values())
        if first_images is None:
            first_images = list(per_image)
        assert list(per_image) == first_images  # same images, same order, in every split
        for fname, group in per_image.items():
            image_id = int(fname.split("_")[-1].split(".")[0])
            assert image_id in eligible
            objs = images[image_id]
            assert [q["object"] for q in group[::2]] == objs[:3]  # first three listed objects are the positives
            negs = [q["object"] for q in group[1::2]]
            assert not set(negs) & set(objs), "a negative is present in the image"
            assert len(set(negs)) == 3


def test_negative_pool_is_selected_images_only(coco):
    index, _ = coco
    selected = P.select_images(P.image_objects(index), 5, seed=0)
    pool = {o for im in selected for o in im["objects"]}
    for split in P.SPLITS:
        assert {q["object"] for q in P.build_split(selected, split, seed=0)} <= pool


def test_popular_takes_most_frequent_absent(coco):
    index, _ = coco
    selected = P.select_images(P.image_objects(index), 12, seed=2)
    freq = P.object_frequencies(selected)
    qs = P.build_split(selected, "popular", seed=2)
    for k, im in enumerate(selected):
        asked = list(im["objects"][:3])
        for i in range(3):
            neg = qs[6 * k + 2 * i + 1]["object"]
            valid = [o for o in freq if o not in im["objects"] and o not in asked]
            assert freq[neg] == max(freq[o] for o in valid)
            asked.append(neg)


def test_adversarial_picks_most_cooccurring_absent_object():
    imgs = [{"image_id": 1, "image": "a.jpg", "objects": ["person", "car", "dog"]},
            {"image_id": 2, "image": "b.jpg", "objects": ["person", "car", "cat"]},
            {"image_id": 3, "image": "c.jpg", "objects": ["person", "car", "bird"]},
            {"image_id": 4, "image": "d.jpg", "objects": ["person", "horse", "cup"]}]
    qs = P.build_split(imgs, "adversarial", seed=0)
    d = qs[18:]
    assert d[0]["object"] == "person" and d[1]["object"] == "car"  # car co-occurs 3x with person, absent in d
    assert d[3]["object"] not in {"person", "horse", "cup", "car"}  # no co-occurring absent object → random valid
    b = qs[6:12]
    assert b[1]["object"] == "dog"  # person: car present → next by co-occurrence, first seen
    assert b[3]["object"] not in {"person", "car", "cat", "dog"}


def test_seeded_determinism_and_split_independence(coco):
    index, _ = coco
    a = P.build_pope(index, num_images=8, seed=5)
    b = P.build_pope(index, num_images=8, seed=5)
    assert a == b
    assert P.build_pope(index, splits=("adversarial",), num_images=8, seed=5)["adversarial"] == a["adversarial"]
    c = P.build_pope(index, num_images=8, seed=6)
    assert c["random"] != a["random"]


def test_articles():
    assert P.make_question("apple") == "Is there an apple in the image?"
    assert P.make_question("umbrella") == "Is there an umbrella in the image?"
    assert P.make_question("dining table") == "Is there a dining table in the image?"


OFFICIAL = [
    ("Yes, there is a dog in the image.", "yes"),
    ("No, there is no dog in the image.", "no"),
    ("no", "no"),
    ("No", "no"),
    ("NO", "yes"),                       # case-sensitive
    ("Not at all", "yes"),               # "Not" is not a negation word
    ("There is not a dog.", "no"),
    ("Yes. There is no cat.", "yes"),    # only the first sentence counts
    ("The dog isn't there", "yes"),      # contractions are not negations
    ("", "yes"),                         # unparseable → yes
    ("No\nthere is", "yes"),             # split on single spaces only
    ("Yes, no doubt", "no"),
    ("no,", "no"),                       # commas are dropped
]
OPERA = [
    ("Yes. There is no cat.", "no"),     # whole answer
    ("NO", "no"),
    ("There isn't a dog", "no"),
    ("Not at all", "yes"),
    ("Yes, there is.", "yes"),
]
STRICT = [("Yes, there is", "yes"), ("no.", "no"), ("**No**", "no"), ("There is a dog", "unknown"), ("", "unknown")]


@pytest.mark.parametrize("text,expected", OFFICIAL)
def test_parser_official(text, expected):
    assert P.parse_official(text) == expected


@pytest.mark.parametrize("text,expected", OPERA)
def test_parser_opera(text, expected):
    assert P.parse_opera(text) == expected


@pytest.mark.parametrize("text,expected", STRICT)
def test_parser_strict(text, expected):
    assert P.parse_strict(text) == expected


def test_metrics_match_published_counts():
    # LLaVA-1.5-13B on the 2910-question random file: TP 1183, FP 31, TN 1379, FN 317 → acc 88.04, F1 87.18.
    answers = ["Yes"] * 1183 + ["Yes"] * 31 + ["No"] * 1379 + ["No"] * 317
    labels = ["yes"] * 1183 + ["no"] * 31 + ["no"] * 1379 + ["yes"] * 317
    m = P.score(answers, labels)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (1183, 31, 1379, 317)
    assert round(100 * m["accuracy"], 2) == 88.04
    assert round(100 * m["f1"], 2) == 87.18
    assert m["yes_ratio"] == pytest.approx(1214 / 2910)


def test_strict_unknown_counts_wrong():
    m = P.score(["Yes", "maybe", "maybe", "No"], ["yes", "yes", "no", "no"], parser="strict")
    assert (m["tp"], m["fp"], m["tn"], m["fn"], m["unknown"]) == (1, 0, 1, 1, 2)
    assert m["accuracy"] == 0.5 and m["unknown_ratio"] == 0.5


def test_zero_division_guard():
    m = P.score(["No", "No"], ["no", "no"])
    assert m["precision"] == 0.0 and m["f1"] == 0.0 and m["accuracy"] == 1.0
