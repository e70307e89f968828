"""``vlmfix demo``: load a model, index the example scenes, serve the comparison page.

Binds 127.0.0.1 unless told otherwise: the page runs a model on this machine for whoever can reach it, so exposing it
(``--host 0.0.0.0``, ``--share``) is an explicit choice, and a non-local host gets a warning.
"""

from __future__ import annotations

import click

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@click.command("demo")
@click.option("--model", "model_spec", default="testbed", show_default=True, metavar="testbed|tiny|ID_OR_PATH",
              help="'testbed': the embedded model (offline); 'tiny': a random tiny LLaVA (smoke test only); or a "
                   "Hugging Face model id / local folder, e.g. llava-hf/llava-1.5-7b-hf.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--dtype", default="auto", show_default=True,
              type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
              help="auto: bfloat16 on a GPU, float32 on CPU.")
@click.option("--examples", "examples_dir", default=None, metavar="DIR|none",
              help="COCO-format folder (images/, annotations/instances_val.json) whose pictures are offered as "
                   "annotated examples. Default: the testbed's evaluation scenes (built on first use). 'none': no "
                   "examples.")
@click.option("--n-examples", default=8, show_default=True, type=click.IntRange(0, 64))
@click.option("--max-new-tokens", default=64, show_default=True, type=click.IntRange(1, 512))
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind; localhost by default.")
@click.option("--port", default=7860, show_default=True, type=click.IntRange(0, 65535),
              help="0: the first free port from 7860 up.")
@click.option("--share", is_flag=True, help="Also publish a temporary public Gradio link (needs internet).")
def demo(model_spec, device, dtype, examples_dir, n_examples, max_new_tokens, host, port, share):
    """Launch the Gradio baseline-vs-mitigated comparison demo."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise click.ClickException("the demo needs Gradio: pip install 'vlmfix[demo]'") from None
    from .app import DEFAULT_PROMPT, build_app, launch
    from .loading import LoadError, load
    from .objects import SceneIndex

    if host not in LOCAL_HOSTS:
        click.secho(f"warning: binding {host}: anyone who can reach this machine can run the model.", fg="yellow",
                    err=True)
    click.echo(f"loading {model_spec} …", err=True)
    try:
        model, processor, name = load(model_spec, device, dtype)
    except LoadError as exc:
        raise click.ClickException(str(exc)) from None

    scenes = None
    if (examples_dir or "").lower() != "none" and n_examples > 0:
        try:
            if examples_dir is None:
                from ..testbed import default_eval_world

                click.echo("indexing example scenes (built once, cached) …", err=True)
                examples_dir = default_eval_world()
            scenes = SceneIndex.load(examples_dir)
        except (OSError, ValueError, KeyError) as exc:
            click.secho(f"warning: no examples ({exc})", fg="yellow", err=True)
    examples = scenes.examples(n_examples, prompts=(DEFAULT_PROMPT, "Describe this image briefly.")) if scenes else []
    app = build_app(model, processor, scenes=scenes, examples=examples, model_name=name,
                    max_new_tokens=max_new_tokens)
    launch(app, host=host, port=port or None, share=share)


__all__ = ["demo"]
