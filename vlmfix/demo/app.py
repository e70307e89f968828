"""The Gradio page: one picture and prompt in, the unmodified and the patched model's answers side by side.

The page is a thin view over ``vlmfix.demo.compare``; it owns only what a browser needs: turning widget values into
method configs, streaming both columns, marking hallucinated objects, and turning every user mistake into a short
message instead of a traceback.

Two choices worth knowing:

* The Compare handler takes the image widget's raw upload record (``preprocess=False``). Gradio's own image
  preprocessing would open the file with PIL before our code runs, so a non-image upload would surface as a generic
  error; here it becomes a sentence. Because the record then comes straight from the client, its path is accepted
  only inside Gradio's upload folder or the examples folder.
* One loaded model serves every visitor. The compare event runs one at a time (``concurrency_limit=1``) and, below
  the UI, every patch -> generate -> unpatch holds the model's lock, so concurrent visitors with different methods
  never see each other's patch.
"""

from __future__ import annotations

import html
import logging
import os
import threading
from pathlib import Path

from . import methods as M
from .compare import (
    MAX_NEW_TOKENS,
    DemoInputError,
    check_prompt,
    load_image,
    model_lock,
    shared_scale,
    side_overlay,
    stream_compare,
)
from .objects import GROUNDED, HALLUCINATED, Example, SceneIndex, highlight, warm_up

log = logging.getLogger("vlmfix.demo")

DEFAULT_PROMPT = "Please describe this image in detail."
MARK_CLASS = {HALLUCINATED: "vf-hall", GROUNDED: "vf-ok"}
CSS = """
.vf-answer { min-height: 9em; }
.vf-answer-text { line-height: 1.7; white-space: pre-wrap; overflow-wrap: anywhere; margin-top: 1.9em; }
.vf-answer mark { border-radius: 4px; padding: 1px 3px; font-weight: 600; }
.vf-answer mark.vf-hall { background: #fecaca; color: #991b1b; }
.vf-answer mark.vf-ok { background: #bbf7d0; color: #166534; }
.vf-legend { font-size: 0.8em; opacity: 0.75; margin-top: 0.6em; }
.vf-stats p { font-size: 0.9em; margin: 0; }
#vf-status p { margin: 0.2em 0; }
footer { display: none !important; }
"""


def theme():
    """A theme with system fonts only: the default one fetches web fonts, which an offline machine cannot."""
    import gradio as gr

    return gr.themes.Soft(primary_hue="indigo", font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "monospace"])


def build_app(model, processor, *, scenes: SceneIndex | None = None, examples: list[Example] | None = None,
              model_name: str = "", max_new_tokens: int = 64, warm: bool = True):
    """A ``gr.Blocks`` comparing ``model`` with and without vlmfix; call ``launch(app, ...)`` to serve it.

    ``scenes`` (a COCO-format folder) supplies example pictures and the ground truth used to mark hallucinated
    objects; ``examples`` overrides which of its pictures are offered. ``warm`` runs one short generation first so
    the first visitor's timings are not inflated by one-off start-up costs.
    """
    import gradio as gr

    if examples is None and scenes is not None:
        examples = scenes.examples(8, prompts=(DEFAULT_PROMPT, "Describe this image briefly."))
    examples = list(examples or [])
    example_root = scenes.root.resolve() if scenes is not None else None
    if warm:
        threading.Thread(target=_warm, args=(model, processor), daemon=True, name="vlmfix-demo-warm").start()

    def on_compare(image_rec, prompt, var_on, var_p, var_rho, vhr_on, vhr_alpha, vhr_mode, ds_on, ds_alpha,
                   ds_beta, ds_local, carve_on, n_tokens):
        skip = gr.skip()
        try:
            path = _upload_path(image_rec, example_root)
            image = load_image(path)
            try:
                cfgs = M.build_methods({"var": var_on, "vhr": vhr_on, "dual_stream": ds_on},
                                       {"var": {"p": var_p, "rho": var_rho}, "vhr": {"alpha": vhr_alpha},
                                        "dual_stream": {"alpha": ds_alpha, "beta": ds_beta, "local_ratio": ds_local}},
                                       vhr_mode=vhr_mode, use_carve=bool(carve_on) and M.carve_available())
            except (TypeError, ValueError) as exc:  # a typed-in slider value the method's config rejects
                raise DemoInputError(f"Method setting not accepted: {exc}") from None
            check_prompt(prompt)
            if not cfgs:
                raise DemoInputError("Tick at least one method for the mitigated column.")
            truth = scenes.truth_for_file(path) if scenes is not None else None
            label = M.describe(cfgs)
            empty = _answer_html(None, None)
            yield (empty, "", None, empty, "", None, "Running the unmodified model first, then the patched one…")
            base = mit = None
            base_shown = False
            for base, mit in stream_compare(model, processor, image, prompt, cfgs, truth=truth,
                                            max_new_tokens=int(n_tokens or max_new_tokens)):
                if not base.done:
                    yield (_answer_html(base, truth), _stats(base), skip, skip, skip, skip, skip)
                elif not base_shown:  # baseline finished: its map (own scale until both exist) and a waiting note
                    base_shown = True
                    yield (_answer_html(base, truth), _stats(base), side_overlay(base.result), empty,
                           _stats(mit, label), skip, skip)
                else:
                    yield (skip, skip, skip, _answer_html(mit, truth), _stats(mit, label), skip, skip)
            scale = shared_scale(base.result, mit.result)
            yield (_answer_html(base, truth), _stats(base), side_overlay(base.result, scale),
                   _answer_html(mit, truth), _stats(mit, label), side_overlay(mit.result, scale),
                   _summary(base.result, mit.result, truth))
        except DemoInputError as exc:
            gr.Warning(str(exc))
            yield (skip, skip, skip, skip, skip, skip, f"**Note:** {exc}")
        except Exception as exc:  # never a traceback in the page; the server log keeps it
            log.exception("comparison failed")
            msg = f"Generation failed ({type(exc).__name__}: {exc}). The server log has the details."
            gr.Warning(msg)
            yield (skip, skip, skip, skip, skip, skip, f"**Error:** {msg}")

    with gr.Blocks(title="vlmfix: baseline vs. mitigated", analytics_enabled=False) as app:
        gr.Markdown("## vlmfix: the same question, with and without hallucination mitigation\n"
                    f"Model: `{model_name or type(model).__name__}`. Pick an example scene or upload a picture, "
                    "choose methods, then **Compare**. Answers are greedy, so they are reproducible. "
                    "Heat maps show where each answer's attention went over the image (one colour scale for both).")
        with gr.Row():
            with gr.Column(scale=2, min_width=320):
                image = gr.Image(type="filepath", sources=["upload", "clipboard"], label="Image", height=280,
                                 elem_id="vf-image")
                prompt = gr.Textbox(value=DEFAULT_PROMPT, label="Prompt", lines=2, max_lines=6, elem_id="vf-prompt")
                with gr.Row():
                    run = gr.Button("Compare", variant="primary", elem_id="vf-compare")
                    reset = gr.Button("Paper defaults", variant="secondary", elem_id="vf-reset")
                status = gr.Markdown("Ready.", elem_id="vf-status")
                if examples:
                    gr.Examples([[str(e.path), e.prompt] for e in examples], inputs=[image, prompt],
                                label="Example scenes (annotated: hallucinated objects get marked)",
                                examples_per_page=4, elem_id="vf-examples")
                gr.Markdown("#### Methods for the mitigated column")
                controls = _method_controls(gr)
                n_tokens = gr.Slider(8, MAX_NEW_TOKENS, value=max_new_tokens, step=8, label="Max new tokens")
            with gr.Column(scale=3):
                with gr.Row(equal_height=False):
                    base_out = _answer_column(gr, "Baseline: unmodified model", "baseline")
                    mit_out = _answer_column(gr, "Mitigated: patched with vlmfix", "mitigated")

        inputs = [image, prompt, *controls["inputs"], n_tokens]
        outputs = [*base_out, *mit_out, status]
        run.click(on_compare, inputs=inputs, outputs=outputs, preprocess=False,
                  concurrency_limit=1, concurrency_id="model", api_name="compare", show_progress="minimal")
        reset.click(lambda: controls["defaults"], outputs=controls["sliders"], api_visibility="private")
    app.queue(default_concurrency_limit=1, max_size=32)
    app.vlmfix_examples = examples  # what the page offers, for tests and launch messages
    app.vlmfix_compare = on_compare  # the Compare handler itself, so tests can drive it without a browser
    return app


def launch(app, *, host: str = "127.0.0.1", port: int | None = None, share: bool = False, block: bool = True,
           quiet: bool = False):
    """Serve ``app`` on ``host:port`` (localhost unless asked); theme and CSS are launch options in Gradio 6."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    return app.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
                      theme=theme(), css=CSS, max_file_size="25mb", show_error=False, ssr_mode=False,
                      quiet=quiet, footer_links=[])


# --------------------------------------------------------------------------------------------------- pieces

def _method_controls(gr) -> dict:
    """A checkbox per method with its strength sliders; returns the inputs in ``on_compare``'s order."""
    sliders, defaults, boxes = {}, [], {}
    for name in ("var", "vhr", "dual_stream"):
        with gr.Group():
            boxes[name] = gr.Checkbox(value=name in M.DEFAULT_METHODS, label=M.TITLES[name],
                                      elem_id=f"vf-use-{name}")
            with gr.Accordion("strength", open=name in M.DEFAULT_METHODS):
                for knob in M.KNOBS[name]:
                    value = M.default(name, knob.field)
                    sliders[(name, knob.field)] = gr.Slider(knob.lo, knob.hi, value=value, step=knob.step,
                                                            label=knob.label, info=f"{knob.info} (paper: {value:g})")
                    defaults.append(value)
                if name == "vhr":
                    vhr_mode = gr.Radio(["exact", "fused"], value="exact", label="mode",
                                        info="exact: the paper's extra image-free pass; fused: one pass, approximate")
    available = M.carve_available()
    carve = gr.Checkbox(value=False, label=M.TITLES["carve"], interactive=available, elem_id="vf-use-carve",
                        info=("a three-pass VQA pipeline (short answers); replaces the methods above when ticked"
                              if available else "not available in this build (vlmfix.pipelines.carve is missing)"))
    s = sliders
    inputs = [boxes["var"], s[("var", "p")], s[("var", "rho")], boxes["vhr"], s[("vhr", "alpha")], vhr_mode,
              boxes["dual_stream"], s[("dual_stream", "alpha")], s[("dual_stream", "beta")],
              s[("dual_stream", "local_ratio")], carve]
    return {"inputs": inputs, "sliders": [*sliders.values(), vhr_mode], "defaults": [*defaults, "exact"]}


def _answer_column(gr, title: str, key: str):
    with gr.Column(min_width=280):
        gr.Markdown(f"### {title}")
        text = gr.HTML(_answer_html(None, None), label="Answer", show_label=True, container=True, padding=True,
                       elem_id=f"vf-{key}-answer", elem_classes=["vf-answer"])
        heat = gr.Image(label="Where the answer looked", type="pil", interactive=False, height=300,
                        elem_id=f"vf-{key}-heat", buttons=["download", "fullscreen"])
        stats = gr.Markdown("", elem_id=f"vf-{key}-stats", elem_classes=["vf-stats"])
    return text, stats, heat  # the order of on_compare's outputs, not of the layout


def _upload_path(record, example_root: Path | None) -> str | None:
    """The server-side path of the image widget's raw value, if it is one we handed out ourselves."""
    if record is None:
        return None
    path = record.get("path") if isinstance(record, dict) else getattr(record, "path", record)
    if not path:
        raise DemoInputError("The upload did not arrive; please try again.")
    from gradio.utils import get_upload_folder

    resolved = Path(path).resolve()
    roots = [Path(get_upload_folder()).resolve()] + ([example_root] if example_root is not None else [])
    if not any(resolved.is_relative_to(r) for r in roots):
        raise DemoInputError("That file is not an upload of this page; please upload the picture again.")
    return str(resolved)


def _answer_html(progress, truth) -> str:
    """The answer as inline HTML: mentioned objects marked once the answer is complete. Model text is escaped."""
    if progress is None:
        return '<div class="vf-answer-text"></div>'
    text = progress.result.text if progress.done else progress.text
    segments = highlight(text, truth) if progress.done else [(text, None)]
    body = "".join(html.escape(part) if label is None else
                   f'<mark class="{MARK_CLASS[label]}" title="{label}">{html.escape(part)}</mark>'
                   for part, label in segments)
    legend = ""
    if progress.done and truth is not None:
        legend = ('<div class="vf-legend"><mark class="vf-hall">red</mark> mentioned but not in the picture · '
                  '<mark class="vf-ok">green</mark> in the picture</div>')
    return f'<div class="vf-answer-text">{body}</div>{legend}'


def _stats(progress, label: str | None = None) -> str:
    head = f"**{label or 'unmodified model'}** · "
    if progress.seconds is None:
        return head + "_waiting for the model…_"
    if not progress.done:
        return head + f"_generating… {progress.seconds:.1f} s_"
    r = progress.result
    parts = [f"**{r.seconds:.2f} s**"]
    if r.n_tokens:
        parts.append(f"{r.n_tokens} tokens · {r.n_tokens / max(r.seconds, 1e-9):.1f} tok/s")
    if r.image_share is not None:
        parts.append(f"{100 * r.image_share:.0f}% of attention on the image")
    notes = "".join(f"  \n_Note: {n}_" for n in r.notes)
    return head + " · ".join(parts) + notes


def _summary(base, mit, truth) -> str:
    if truth is None:
        return ("Done. This picture is not one of the annotated examples, so hallucinated objects are not marked.")

    def fmt(side):
        return f"{len(side.hallucinated)} ({', '.join(side.hallucinated)})" if side.hallucinated else "0"

    return (f"Done. Objects mentioned but not in the picture: baseline {fmt(base)}, mitigated {fmt(mit)}. "
            f"In the picture: {', '.join(sorted(truth.objects)) or 'nothing annotated'}.")


def _warm(model, processor):
    """One 1-token generation with the model's lock held, so start-up costs do not land in a visitor's timing."""
    from PIL import Image

    from .compare import build_inputs

    try:
        warm_up()
        with model_lock(model):
            inputs = build_inputs(model, processor, Image.new("RGB", (64, 64), (127, 127, 127)), "Describe.")
            model.generate(**inputs, max_new_tokens=1, do_sample=False)
    except Exception:  # warming is best effort; a real problem shows up on the first Compare with a message
        log.debug("warm-up failed", exc_info=True)


__all__ = ["build_app", "launch", "theme", "CSS", "DEFAULT_PROMPT"]
