"""``vlmfix score`` and ``vlmfix eval`` end to end through click's CliRunner, including bad inputs."""

import json

import pytest
from click.testing import CliRunner

from vlmfix.cli import cli
from vlmfix.testing import tiny_llava, write_tiny_coco

OBJS = {1: ["person", "dog", "cup"], 2: ["cat", "chair", "bottle", "person"], 3: ["car", "bird", "dog"],
        4: ["horse", "person", "cup", "dining table"], 5: ["dog"]}
CAPS = {1: ["A man with his dog."], 2: ["A cat on a chair."], 3: ["A car and a bird."], 4: ["A horse."],
        5: ["A puppy."]}
SMALL_VOCAB = ["Yes", "No", "no", "not", "yes", ".", ",", "there", "is", "a", "dog", "cat", "man", "chair", "cup"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    ann, img = write_tiny_coco(root, OBJS, CAPS, image_size=16)
    model, processor = tiny_llava(vocab=SMALL_VOCAB, init_std=0.3)
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    return root, ann, img, root / "model"


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_score_pope(tmp_path):
    qs = [{"question_id": i, "image": "x.jpg", "text": "Is there a dog in the image?", "label": lab}
          for i, lab in enumerate(["yes", "no", "yes", "no", "yes", "no"], start=1)]
    ans = [{"question_id": 6, "text": "No."}, {"question_id": 1, "answer": "Yes, there is."},
           {"question_id": 2, "answer": "Yes"}, {"question_id": 3, "answer": "No, there is not."},
           {"question_id": 4, "text": "There is no dog."}, {"question_id": 5, "answer": "yes"}]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qs))
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(a) + "\n" for a in ans))
    r = invoke("score", "pope", "--answers", tmp_path / "a.jsonl", "--questions", tmp_path / "q.jsonl",
               "--output", tmp_path / "r.json")
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "r.json").read_text())
    assert (res["tp"], res["fp"], res["tn"], res["fn"]) == (2, 1, 2, 1)
    assert res["accuracy"] == pytest.approx(4 / 6) and res["precision"] == pytest.approx(2 / 3)
    assert res["recall"] == pytest.approx(2 / 3) and res["f1"] == pytest.approx(2 / 3)
    assert res["yes_ratio"] == pytest.approx(0.5)
    # a missing answer is an error and leaves no output
    (tmp_path / "a2.jsonl").write_text("".join(json.dumps(a) + "\n" for a in ans[:-1]))
    r = CliRunner().invoke(cli, ["score", "pope", "--answers", str(tmp_path / "a2.jsonl"), "--questions",
                                 str(tmp_path / "q.jsonl"), "--output", str(tmp_path / "r2.json")])
    assert r.exit_code == 1 and "without an answer" in r.output
    assert not (tmp_path / "r2.json").exists()


def test_score_chair(world, tmp_path):
    _, ann, _, _ = world
    caps = [{"image_id": 1, "caption": "A man and two dogs near a cup and a cat."},
            {"image_id": 5, "caption": "A dog."}]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(c) + "\n" for c in caps))
    r = invoke("score", "chair", "--captions", tmp_path / "c.jsonl", "--coco-annotations", ann,
               "--output", tmp_path / "r.json", "--cache-dir", tmp_path / "cache")
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "r.json").read_text())
    assert set(res["metrics"]) >= {"chair_s", "chair_i", "recall", "precision", "f1", "len"}
    assert res["captions"][0]["mentioned"] == ["person", "dog", "cup", "cat"]
    assert res["captions"][0]["hallucinated"] == ["cat"]
    assert res["metrics"]["chair_s"] == 0.5 and res["metrics"]["chair_i"] == pytest.approx(1 / 5)


@pytest.mark.parametrize("content,needle", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a COCO annotation object"),
    ('{"images": [], "annotations": []}', "missing list"),
])
def test_bad_annotation_files(tmp_path, content, needle):
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "instances_val.json").write_text(content)
    (tmp_path / "c.jsonl").write_text('{"image_id": 1, "caption": "a dog"}\n')
    r = CliRunner().invoke(cli, ["score", "chair", "--captions", str(tmp_path / "c.jsonl"), "--coco-annotations",
                                 str(tmp_path / "ann"), "--output", str(tmp_path / "r.json"), "--no-cache"])
    assert r.exit_code == 1 and needle in r.output
    assert not (tmp_path / "r.json").exists()


def test_eval_pope_and_chair_end_to_end(world, tmp_path):
    _, ann, img, model = world
    r = invoke("eval", "pope", "--model", model, "--coco-annotations", ann / "instances_val.json", "--images", img,
               "--num-images", 3, "--max-new-tokens", 3, "--batch-size", 4, "--output", tmp_path / "pope",
               "--device", "cpu", "--no-progress")
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "pope" / "baseline" / "results.json").read_text())
    assert set(res["splits"]) == {"random", "popular", "adversarial"}
    for m in res["splits"].values():
        assert m["n"] == 18 and 0 <= m["accuracy"] <= 1
    proto = res["protocol"]
    assert proto["parser"] == "official" and proto["max_new_tokens"] == 3 and proto["methods"] == []
    assert proto["decoding"]["strategy"] == "greedy" and len(proto["questions"]["random"]["sha256"]) == 64
    # the written question files can be fed back unchanged
    qdir = tmp_path / "pope" / "questions"
    r = invoke("eval", "pope", "--model", model, "--questions", qdir / "coco_pope_popular.json", "--images", img,
               "--max-new-tokens", 3, "--batch-size", 4, "--output", tmp_path / "pope2", "--no-progress")
    assert r.exit_code == 0, r.output
    res2 = json.loads((tmp_path / "pope2" / "baseline" / "results.json").read_text())
    assert res2["splits"]["popular"] == res["splits"]["popular"]
    r = invoke("eval", "chair", "--model", model, "--coco-annotations", ann, "--images", img, "--num-images", 3,
               "--max-new-tokens", 6, "--output", tmp_path / "chair", "--cache-dir", tmp_path / "cache",
               "--no-progress")
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "chair" / "baseline" / "results.json").read_text())
    assert res["metrics"]["num_captions"] == 3 and len(res["captions"]) == 3
    assert res["protocol"]["prompt"]["text"] == "Please describe this image in detail."


def test_eval_bad_inputs(world, tmp_path):
    _, ann, img, model = world
    q = tmp_path / "q.jsonl"
    q.write_text('{"question_id": 1, "image": "missing.jpg", "text": "Is there a dog in the image?", '
                 '"label": "yes"}\n')
    r = CliRunner().invoke(cli, ["eval", "pope", "--model", str(model), "--questions", str(q), "--images", str(img),
                                 "--output", str(tmp_path / "o")])
    assert r.exit_code == 1 and "missing.jpg" in r.output and "not found" in r.output
    assert not list((tmp_path).rglob("results.json"))
    q.write_text('{"question_id": 1, "image": "x.jpg", "text": "hi"}\n')
    r = CliRunner().invoke(cli, ["eval", "pope", "--model", str(model), "--questions", str(q), "--images", str(img),
                                 "--output", str(tmp_path / "o")])
    assert r.exit_code == 1 and "label" in r.output
    # a text-only model is refused before generation
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=8).save_pretrained(tmp_path / "textonly")
    r = CliRunner().invoke(cli, ["eval", "pope", "--model", str(tmp_path / "textonly"), "--coco-annotations",
                                 str(ann / "instances_val.json"), "--images", str(img), "--output",
                                 str(tmp_path / "o2")])
    assert r.exit_code == 1 and "takes no images" in r.output
    r = CliRunner().invoke(cli, ["eval", "pope", "--model", str(model), "--coco-annotations",
                                 str(ann / "instances_val.json"), "--output", str(tmp_path / "o3")])
    assert r.exit_code == 1 and "--images" in r.output


def test_default_run_compares_baseline_var_and_vhr_on_the_testbed(world, tmp_path, monkeypatch):
    """``vlmfix eval pope`` with no model/method: the testbed world and model, baseline, VAR, VHR, one table."""
    import vlmfix
    from vlmfix.eval import tasks

    root, _, _, model_dir = world
    calls = []
    monkeypatch.setattr(tasks, "default_world", lambda: root)

    def fake_load(name, **kw):
        assert name == "testbed"
        from transformers import AutoModelForImageTextToText, AutoProcessor

        return AutoModelForImageTextToText.from_pretrained(model_dir).eval(), AutoProcessor.from_pretrained(model_dir)

    monkeypatch.setattr(tasks, "load_model", fake_load)
    monkeypatch.setattr(vlmfix, "patch", lambda m, *cfgs: calls.append(("patch", [c.name for c in cfgs])),
                        raising=False)
    monkeypatch.setattr(vlmfix, "unpatch", lambda m: calls.append(("unpatch",)), raising=False)
    r = invoke("eval", "pope", "--num-images", 2, "--max-new-tokens", 2, "--split", "popular",
               "--output", tmp_path / "cmp", "--no-progress")
    assert r.exit_code == 0, r.output
    assert calls == [("patch", ["var"]), ("unpatch",), ("patch", ["vhr"]), ("unpatch",)]
    cmp = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert list(cmp) == ["baseline", "var", "vhr"]
    assert cmp["vhr"]["protocol"]["batch_size"] == 32
    assert cmp["var"]["protocol"]["methods"][0]["method"] == "var"
    assert cmp["var"]["protocol"]["questions"] == cmp["baseline"]["protocol"]["questions"]
    assert "baseline" in r.output and "var" in r.output


def test_tiny_llava_processor_and_generate():
    import torch

    from vlmfix.eval.generate import build_prompt
    from vlmfix.testing import solid_image

    model, processor = tiny_llava()
    prompt = build_prompt(processor, "Is there a dog in the image?")
    assert prompt == "USER: <image>\nIs there a dog in the image? ASSISTANT:"
    batch = processor(images=[solid_image(), solid_image((0, 0, 0))], text=[prompt, prompt + " yes"], padding=True,
                      return_tensors="pt")
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert (batch["input_ids"] == image_id).sum(dim=1).tolist() == [4, 4]
    assert batch["input_ids"][0, 0] == processor.tokenizer.pad_token_id  # left padding
    assert processor.tokenizer.convert_tokens_to_ids("giraffe") != processor.tokenizer.unk_token_id
    out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape == (2, batch["input_ids"].shape[1] + 3)
    assert model.dtype == torch.float32 and not model.training


def test_method_sets_and_missing_patch(tmp_path, monkeypatch):
    import vlmfix
    from vlmfix.eval.errors import EvalInputError
    from vlmfix.eval.methods import method_sets, patched

    cfg = tmp_path / "var.json"
    cfg.write_text(json.dumps({"method": "var", "p": 0.3}))
    assert [(l, [c.name for c in cs]) for l, cs in method_sets()] == [("baseline", [])]
    sets = method_sets(["var", "vhr"], [cfg])
    assert sets[0][0] == "var+vhr" and sets[0][1][0].p == 0.3
    sets = method_sets(compare=["baseline", "var+vhr"], config_paths=[cfg])
    assert [l for l, _ in sets] == ["baseline", "var+vhr"] and sets[1][1][0].p == 0.3
    assert [l for l, _ in method_sets(default_compare=("baseline", "var"))] == ["baseline", "var"]
    with pytest.raises(EvalInputError, match="unknown method"):
        method_sets(["nope"])
    cfg.write_text(json.dumps({"method": "var", "bogus": 1}))
    with pytest.raises(EvalInputError, match="bogus"):
        method_sets(config_paths=[cfg])
    monkeypatch.delattr(vlmfix, "patch", raising=False)
    with pytest.raises(EvalInputError, match="patch"):
        with patched(object(), method_sets(["var"])[0][1]):
            pass


def test_nltk_lemmatizer_needs_its_data(world, tmp_path):
    try:
        import nltk  # noqa: F401

        pytest.skip("nltk is installed; its data may be too")
    except ImportError:
        pass
    _, ann, _, _ = world
    from vlmfix.eval.chair import ChairEvaluator
    from vlmfix.eval.errors import EvalInputError

    with pytest.raises(EvalInputError, match="nltk"):
        ChairEvaluator(ann, lemmatizer="nltk", cache_dir=tmp_path)


@pytest.mark.filterwarnings("ignore:vlmfix VAR")
def test_compare_with_the_real_patch(world, tmp_path):
    """Baseline and VAR through ``vlmfix.patch``; the model is restored between method sets."""
    import vlmfix

    if getattr(vlmfix, "patch", None) is None:
        pytest.skip("vlmfix.patch is not available yet")
    _, ann, img, model = world
    args = ["eval", "pope", "--model", model, "--coco-annotations", ann / "instances_val.json", "--images", img,
            "--num-images", 2, "--max-new-tokens", 2, "--split", "adversarial", "--no-progress"]
    r = invoke(*args, "--compare", "var", "--compare", "baseline", "--output", tmp_path / "cmp")
    assert r.exit_code == 0, r.output
    r = invoke(*args, "--output", tmp_path / "base")
    assert r.exit_code == 0, r.output
    cmp = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert [m["method"] for m in cmp["var"]["protocol"]["methods"]] == ["var"]
    base = json.loads((tmp_path / "base" / "baseline" / "results.json").read_text())
    assert cmp["baseline"]["splits"] == base["splits"]  # run after VAR: unpatch gave the original model back


def test_carve_as_a_method_set(world, tmp_path):
    """``--compare carve`` answers each question with the CARVE pipeline on the loaded model, sample by sample."""
    import vlmfix
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    _, ann, img, model_dir = world
    cfg = {"method": "carve", "layers": [0, 1], "max_new_tokens": 3}
    (tmp_path / "carve.json").write_text(json.dumps(cfg))
    r = invoke("eval", "pope", "--model", model_dir, "--coco-annotations", ann / "instances_val.json", "--images", img,
               "--num-images", 2, "--max-new-tokens", 3, "--split", "random", "--no-progress", "--batch-size", 2,
               "--method", "carve", "--method-config", tmp_path / "carve.json", "--output", tmp_path / "out")
    assert r.exit_code == 0, r.output
    run = tmp_path / "out" / "carve"
    result = json.loads((run / "results.json").read_text())
    assert [m["method"] for m in result["protocol"]["methods"]] == ["carve"]
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    model = LlavaForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    config = vlmfix.CARVE(layers=(0, 1), max_new_tokens=3)
    for s in samples[:3]:
        image = Image.open(img / s["image"]).convert("RGB")
        assert s["answer"] == vlmfix.carve(model, processor, image, s["question"], config=config).answer
