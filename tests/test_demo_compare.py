"""The demo's comparison logic, its Compare handler and its CLI, without a browser.

The mitigated column must be exactly what ``vlmfix.patched(...)`` + ``generate`` gives, the baseline exactly the
unmodified model, and concurrent visitors with different methods must not see each other's patch.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vlmfix
from vlmfix.demo.compare import DemoInputError, build_inputs, compare
from vlmfix.demo.objects import GROUNDED, HALLUCINATED, SceneIndex, highlight
from vlmfix.testing import tiny_llava

PROMPT = "Please describe this image in detail."
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:gradio.helpers")  # gr.Warning outside a request
N_TOKENS = 10


@pytest.fixture(scope="module")
def tiny():
    model, processor = tiny_llava(image_size=56, patch_size=14)  # 16 image tokens: a 4x4 heat map
    return model, processor


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from vlmfix.testbed import build_world

    return SceneIndex.load(build_world(tmp_path_factory.mktemp("world"), 3, seed=7))


@pytest.fixture(scope="module")
def example(scenes):
    ex = scenes.examples(1)[0]
    return ex.path, scenes.truth_for_file(ex.path)


def _reference(model, processor, image_path, methods):
    inputs = build_inputs(model, processor, Image.open(image_path).convert("RGB"), PROMPT)
    ctx = vlmfix.patched(model, *methods) if methods else torch.no_grad()
    with ctx:
        out = model.generate(**inputs, max_new_tokens=N_TOKENS, do_sample=False)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def test_compare_equals_plain_and_patched_generate(tiny, example):
    model, processor = tiny
    path, truth = example
    methods = [vlmfix.VHR(), vlmfix.DualStream()]
    res = compare(model, processor, path, PROMPT, methods, max_new_tokens=N_TOKENS, truth=truth)
    assert not vlmfix.is_patched(model)
    assert res.baseline.token_ids == _reference(model, processor, path, [])
    assert res.mitigated.token_ids == _reference(model, processor, path, methods)
    assert res.baseline.token_ids != res.mitigated.token_ids  # the patch really acted on this model
    assert res.mitigated.methods == tuple(methods) and res.baseline.methods == ()
    again = compare(model, processor, path, PROMPT, methods, max_new_tokens=N_TOKENS, truth=truth)
    assert (again.baseline.text, again.mitigated.text) == (res.baseline.text, res.mitigated.text)  # greedy


def test_compare_result_has_timings_heatmaps_and_hallucinations(tiny, example):
    model, processor = tiny
    path, truth = example
    res = compare(model, processor, path, PROMPT, ["vhr"], max_new_tokens=N_TOKENS, truth=truth)
    for side in (res.baseline, res.mitigated):
        assert side.seconds > 0 and side.n_tokens == N_TOKENS and side.text
        assert side.heatmap.shape == (4, 4) and np.isfinite(side.heatmap).all() and (side.heatmap >= 0).all()
        assert 0 < side.image_share <= 1.0 + 1e-5
        mentioned = [m.category for m in side.mentions]
        assert side.hallucinated == list(dict.fromkeys(c for c in mentioned if c not in truth.objects))
    left, right = res.overlays()
    assert left.size == right.size == (336, 336)
    lo, hi = res.heat_scale()
    assert lo <= hi


def test_concurrent_comparisons_do_not_mix_patches(tiny, example):
    model, processor = tiny
    path, _ = example
    # dual-stream on every layer, so that it also changes the recorded (middle) layer of this 2-layer model
    dual = vlmfix.DualStream(alpha=2.0, beta=2.0, layers=(0, 1))
    plans = {"vhr": [vlmfix.VHR()], "dual": [dual], "both": [vlmfix.VHR(alpha=3.0), dual]}
    expected = {k: compare(model, processor, path, PROMPT, m, max_new_tokens=N_TOKENS) for k, m in plans.items()}
    # the plans are distinguishable: by answer (VHR) or at least by where the answer looked (dual-stream)
    assert len({tuple(r.mitigated.token_ids) for r in expected.values()}) > 1
    assert not np.allclose(expected["dual"].mitigated.heatmap, expected["dual"].baseline.heatmap, rtol=1e-4)
    barrier, got, errors = threading.Barrier(len(plans)), {}, []

    def visitor(key):
        try:
            barrier.wait()
            got[key] = [compare(model, processor, path, PROMPT, plans[key], max_new_tokens=N_TOKENS)
                        for _ in range(2)]
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=visitor, args=(k,)) for k in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    for key, runs in got.items():
        for r in runs:
            assert r.baseline.token_ids == expected[key].baseline.token_ids
            assert r.mitigated.token_ids == expected[key].mitigated.token_ids
            np.testing.assert_allclose(r.mitigated.heatmap, expected[key].mitigated.heatmap, rtol=1e-5, atol=1e-7)
    assert not vlmfix.is_patched(model)


def test_carve_side_is_the_pipeline_answer(tiny, example):
    pytest.importorskip("vlmfix.pipelines.carve", reason="the CARVE pipeline is not in this build")
    model, processor = tiny
    path, truth = example
    question = "Is there a cup in the image?"
    res = compare(model, processor, path, question, [vlmfix.CARVE()], max_new_tokens=6, truth=truth)
    ref = vlmfix.carve(model, processor, Image.open(path).convert("RGB"), question,
                       config=vlmfix.CARVE(max_new_tokens=6))
    assert res.mitigated.text == ref.answer
    assert res.mitigated.heat_kind == "saliency" and res.mitigated.heatmap.shape == tuple(ref.saliency.shape)
    assert res.overlays()[1] is not None and not vlmfix.is_patched(model)


def test_bad_inputs_are_friendly(tiny, tmp_path, example):
    model, processor = tiny
    path, _ = example
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    with pytest.raises(DemoInputError, match="not an image"):
        compare(model, processor, text, PROMPT, ["vhr"])
    huge = tmp_path / "huge.png"
    Image.new("1", (8000, 6000)).save(huge)  # 48 MP, a few kB on disk
    with pytest.raises(DemoInputError, match="too large"):
        compare(model, processor, huge, PROMPT, ["vhr"])
    with pytest.raises(DemoInputError, match="type a prompt"):
        compare(model, processor, path, "   ", ["vhr"])
    with pytest.raises(DemoInputError, match="upload an image"):
        compare(model, processor, None, PROMPT, ["vhr"])
    with pytest.raises(DemoInputError, match="at least one method"):
        compare(model, processor, path, PROMPT, [])
    assert not vlmfix.is_patched(model)


def test_highlight_marks_objects_not_in_the_picture(scenes):
    truth = scenes.truth(1)
    present = sorted(truth.objects)[0]
    absent = next(c for c in ("traffic light", "giraffe", "toothbrush") if c not in truth.objects)
    text = f"I see a {present} and two {absent}s. Nothing else."
    mentions, bad = truth.judge(text)
    assert [m.category for m in mentions] == [present, absent] and bad == [absent]
    segments = highlight(text, truth)
    assert "".join(s for s, _ in segments) == text
    assert (present, GROUNDED) in segments and (f"{absent}s", HALLUCINATED) in segments
    assert highlight(text, None) == [(text, None)]


# ------------------------------------------------------------------------------------------------ the page handler

@pytest.fixture(scope="module")
def handler(tiny, scenes):
    pytest.importorskip("gradio", reason="the page handler needs gradio: pip install 'vlmfix[demo]'")
    from vlmfix.demo.app import build_app

    app = build_app(*tiny, scenes=scenes, warm=False)
    defaults = [True, 0.6, 0.5, True, 2.0, "exact", False, 0.7, 0.4, 0.25, False, N_TOKENS]

    names = ["var", "var_p", "var_rho", "vhr", "vhr_alpha", "vhr_mode", "ds", "ds_alpha", "ds_beta", "ds_local",
             "carve", "n_tokens"]

    def run(record, prompt=PROMPT, **over):
        args = [over.get(name, value) for name, value in zip(names, defaults, strict=True)]
        return list(app.vlmfix_compare(record, prompt, *args))

    yield run
    shutil.rmtree(_upload_folder(), ignore_errors=True)


def _upload_folder():
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder()) / "vlmfix-demo-tests"


def _upload(tmp_name, data: bytes | None = None, image: Image.Image | None = None):
    """Put a file where Gradio keeps uploads, as the browser would, and return the widget's raw value."""
    folder = _upload_folder()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / tmp_name
    if image is not None:
        image.save(path)
    else:
        path.write_bytes(data)
    return {"path": str(path), "orig_name": tmp_name}


def test_handler_streams_both_columns_and_marks_hallucinations(handler, tiny, example):
    path, truth = example
    steps = handler({"path": str(path), "orig_name": path.name}, var=False)
    final = steps[-1]
    base_text, base_stats, base_heat, mit_text, mit_stats, mit_heat, status = final
    assert len(steps) > 3  # streamed: several updates before the final one
    assert isinstance(base_heat, Image.Image) and isinstance(mit_heat, Image.Image)
    assert "s**" in base_stats and "VHR(alpha=2, exact)" in mit_stats
    assert "Done." in status and "In the picture:" in status
    assert 'class="vf-answer-text"' in base_text and 'class="vf-answer-text"' in mit_text
    # one red mark per hallucinated mention of the final answer, plus the legend's sample mark
    res = compare(*tiny, path, PROMPT, [vlmfix.VHR()], max_new_tokens=N_TOKENS, truth=truth)
    n_bad = sum(m.category not in truth.objects for m in res.baseline.mentions)
    assert base_text.count('class="vf-hall"') == n_bad + 1
    assert f"baseline {len(res.baseline.hallucinated)}" in status


def test_answer_html_escapes_model_text(scenes):
    pytest.importorskip("gradio", reason="the page needs gradio: pip install 'vlmfix[demo]'")
    from vlmfix.demo.app import _answer_html
    from vlmfix.demo.compare import Progress, SideResult

    text = "a <script>alert(1)</script> giraffe & a bench"
    done = Progress(text=text, seconds=1.0, result=SideResult("baseline", (), text, [], 1.0))
    out = _answer_html(done, scenes.truth(1))
    assert "<script>" not in out and "&lt;script&gt;" in out and "&amp;" in out
    assert '<mark class="vf-hall" title="hallucinated">giraffe</mark>' in out


@pytest.mark.parametrize("make, message", [
    (lambda: None, "upload an image"),
    (lambda: {"path": "/etc/hostname"}, "not an upload of this page"),
    (lambda: _upload("notes.png", b"plain text, not pixels"), "not an image"),
    (lambda: _upload("huge.png", image=Image.new("1", (8000, 6000))), "too large"),
])
def test_handler_bad_uploads_give_a_message_not_a_traceback(handler, make, message):
    steps = handler(make())
    assert len(steps) == 1
    assert message in steps[-1][-1] and "Traceback" not in steps[-1][-1]


def test_handler_bad_settings(handler, example):
    record = {"path": str(example[0])}
    assert "type a prompt" in handler(record, prompt="  ")[-1][-1]
    assert "at least one method" in handler(record, var=False, vhr=False)[-1][-1]
    assert "VAR.p must be in" in handler(record, var_p=1.5)[-1][-1]  # a typed-in value outside the slider


# ------------------------------------------------------------------------------------------------ the command

def test_cli_defaults_bind_localhost(monkeypatch, tiny):
    pytest.importorskip("gradio", reason="the demo command needs gradio: pip install 'vlmfix[demo]'")
    from click.testing import CliRunner

    from vlmfix.cli import cli
    from vlmfix.demo import app as app_module
    from vlmfix.demo import loading

    seen = {}
    monkeypatch.setattr(loading, "load", lambda spec, device, dtype: (*tiny, f"stub {spec}"))
    monkeypatch.setattr(app_module, "launch", lambda app, **kw: seen.update(kw, app=app))
    res = CliRunner().invoke(cli, ["demo", "--model", "tiny", "--examples", "none"])
    assert res.exit_code == 0, res.output
    assert seen["host"] == "127.0.0.1" and seen["share"] is False and seen["port"] == 7860

    monkeypatch.setattr(loading, "load", lambda *a: (_ for _ in ()).throw(loading.LoadError("no weights here")))
    res = CliRunner().invoke(cli, ["demo"])
    assert res.exit_code == 1 and "no weights here" in res.output and "Traceback" not in res.output


def test_mentions_without_the_chair_evaluator(monkeypatch):
    """The plain matcher used when ``vlmfix.eval`` is absent: names, listed synonyms, simple plurals, two-word names."""
    from vlmfix.demo import objects

    monkeypatch.setattr(objects, "_chair_parser", lambda *a: None)
    finder = objects.MentionFinder({"cup": ["cup", "mug"], "traffic light": ["traffic light"], "bus": ["bus"]})
    found = finder.find("Two mugs, a bus, buses and traffic lights; a cupboard.")
    assert [(m.surface, m.category) for m in found] == [("mugs", "cup"), ("bus", "bus"), ("buses", "bus"),
                                                          ("traffic lights", "traffic light")]
