"""``vlmfix eval pope|chair`` (generate + score) and ``vlmfix score pope|chair`` (score outputs made elsewhere).

Defaults pin the reference protocols (official POPE construction and parser, greedy decoding, CHAIR with 500 images,
512 new tokens and "Please describe this image in detail.") and every setting lands in the results' ``protocol``.
"""

from __future__ import annotations

import re
from pathlib import Path

import click

from . import pope as P

DEFAULT_COMPARE = ("baseline", "var", "vhr")
DEFAULT_RUN_BATCH = 32
DEFAULT_RUN_IMAGES = 50  # the no-argument run: a testbed subset that finishes in minutes on a laptop CPU


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip("/").replace("/", "__")) or "model"


def _model_options(f):
    opts = [
        click.option("--model", default=None, help="HF hub id, local checkpoint path, or 'testbed' (default)."),
        click.option("--method", "methods", multiple=True,
                     help="Method to apply (var, vhr, dual_stream); repeat to combine. Omit for the baseline."),
        click.option("--method-config", "method_configs", multiple=True, type=click.Path(dir_okay=False),
                     help='JSON file with {"method": "var", ...knobs} or a list of them.'),
        click.option("--compare", multiple=True,
                     help="Run several method sets in turn on the same inputs, e.g. --compare baseline "
                          "--compare var+vhr. Default with no --model/--method: baseline and var on the testbed."),
        click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto."),
        click.option("--dtype", default="auto", show_default=True,
                     help="float32, bfloat16, float16 or auto (bf16 on GPU, fp32 on CPU)."),
        click.option("--device-map", default=None, help="Passed to from_pretrained, e.g. 'auto' to spread a large "
                                                        "model over the visible GPUs."),
        click.option("--batch-size", default=None, type=click.IntRange(1),
                     help="Rows per generate call (default 8; 32 for the no-argument testbed run)."),
        click.option("--num-beams", default=1, show_default=True, type=click.IntRange(1),
                     help="1 = greedy (default protocol)."),
        click.option("--seed", default=0, show_default=True, type=int,
                     help="Seeds the question/image draw (generation is deterministic)."),
        click.option("--output", type=click.Path(file_okay=False), default=None,
                     help="Run directory (default runs/<task>/<model>); one sub-directory per method set."),
        click.option("--resume", is_flag=True, help="Continue an interrupted run in --output."),
        click.option("--overwrite", is_flag=True, help="Discard earlier samples in --output."),
        click.option("--limit", type=click.IntRange(1), default=None,
                     help="Only the first N questions per split / N images (smoke tests)."),
        click.option("--no-progress", is_flag=True, help="No progress bars."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _common(kw, task):
    from .methods import method_sets
    from .tasks import ModelSpec, RunOptions

    default_run = kw["model"] is None and not kw["methods"] and not kw["method_configs"]
    model = kw["model"] or "testbed"
    sets = method_sets(kw["methods"], kw["method_configs"], kw["compare"],
                       DEFAULT_COMPARE if default_run else ())
    if kw["resume"] and kw["overwrite"]:
        raise click.UsageError("--resume and --overwrite exclude each other")
    output = Path(kw["output"] or Path("runs") / task / _slug(model))
    spec = ModelSpec(model, kw["device"], kw["dtype"], kw["device_map"])
    batch_size = kw["batch_size"] or (DEFAULT_RUN_BATCH if default_run and model == "testbed" else 8)
    opts = RunOptions(output=output, batch_size=batch_size, resume=kw["resume"], overwrite=kw["overwrite"],
                      progress=not kw["no_progress"], method_sets=sets)
    return spec, opts


@click.group("eval")
def eval_group():
    """Generate with a (patched) model and score POPE or CHAIR under a recorded protocol."""


@eval_group.command("pope")
@_model_options
@click.option("--coco-annotations", type=click.Path(), default=None,
              help="instances_val2014.json (or a directory holding one instances_*.json) to build questions from.")
@click.option("--images", type=click.Path(), default=None, help="Directory of the images (e.g. val2014/).")
@click.option("--split", type=click.Choice([*P.SPLITS, "all"]), default="all", show_default=True)
@click.option("--questions", "questions_files", multiple=True, type=click.Path(dir_okay=False),
              help="Use these question files as they are (JSON lines: question_id, image, text, label); the split "
                   "is taken from the file name. Repeat for several splits.")
@click.option("--num-images", default=None, type=click.IntRange(1),
              help="Images to build questions from (default 500; 50 for the no-argument testbed run).")
@click.option("--parser", type=click.Choice(sorted(P.PARSERS)), default="official", show_default=True,
              help="official = POPE evaluate.py; opera = OPERA/PAI (n't, NO); strict = first word yes/no.")
@click.option("--prompt-suffix", default="", show_default=True,
              help="Appended to each question, e.g. ' Answer the question using a single word or phrase.'")
@click.option("--max-new-tokens", default=128, show_default=True, type=click.IntRange(1))
def pope_cmd(coco_annotations, images, split, questions_files, num_images, parser, prompt_suffix, max_new_tokens,
             **kw):
    """POPE: build (or load) yes/no questions, answer them, score per split."""
    from .generate import Decoding
    from .tasks import run_pope
    from .ui import pope_table, show

    if num_images is None:
        default_run = not any(kw[k] for k in ("model", "methods", "method_configs", "compare"))
        num_images = DEFAULT_RUN_IMAGES if default_run and not coco_annotations and not questions_files else 500
    spec, opts = _common(kw, "pope")
    results = run_pope(model_spec=spec, opts=opts, annotations=coco_annotations, images=images,
                       questions_files=questions_files, split=split, num_images=num_images, seed=kw["seed"],
                       parser=parser, prompt_suffix=prompt_suffix,
                       decoding=Decoding(max_new_tokens, kw["num_beams"]), limit=kw["limit"])
    _finish(results, opts, pope_table, f"POPE ({spec.name}, parser {parser})", show)


@eval_group.command("chair")
@_model_options
@click.option("--coco-annotations", type=click.Path(), default=None,
              help="Directory with instances_*.json and captions_*.json (all found are loaded).")
@click.option("--images", type=click.Path(), default=None, help="Directory of the images (e.g. val2014/).")
@click.option("--num-images", default=500, show_default=True, type=click.IntRange(1))
@click.option("--image-ids", type=click.Path(dir_okay=False), default=None,
              help="Caption exactly these images (JSON list, JSON lines with image_id, or one id per line).")
@click.option("--max-new-tokens", default=512, show_default=True, type=click.IntRange(1))
@click.option("--prompt", default="Please describe this image in detail.", show_default=True)
@click.option("--synonyms", type=click.Path(dir_okay=False), default=None,
              help="JSON {category: [synonyms]} replacing the COCO vocabulary (non-COCO worlds).")
@click.option("--lemmatizer", type=click.Choice(["lemminflect", "nltk"]), default="lemminflect", show_default=True)
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Where the built CHAIR ground truth is cached (default ~/.cache/vlmfix/chair).")
def chair_cmd(coco_annotations, images, num_images, image_ids, max_new_tokens, prompt, synonyms, lemmatizer,
              cache_dir, **kw):
    """CHAIR: caption images with a (patched) model and count hallucinated COCO objects."""
    from .generate import Decoding
    from .tasks import run_chair
    from .ui import chair_table, show

    spec, opts = _common(kw, "chair")
    results = run_chair(model_spec=spec, opts=opts, annotations=coco_annotations, images=images,
                        num_images=num_images, seed=kw["seed"], prompt=prompt,
                        decoding=Decoding(max_new_tokens, kw["num_beams"]), image_ids=image_ids,
                        synonyms=synonyms, lemmatizer=lemmatizer, cache_dir=cache_dir, limit=kw["limit"])
    _finish(results, opts, chair_table, f"CHAIR ({spec.name})", show)


def _finish(results, opts, table, title, show):
    from .io import write_json_atomic

    if not results or any(r is None for r in results.values()):
        return  # not rank 0
    show(table(title, results))
    if len(results) > 1:
        write_json_atomic(Path(opts.output) / "comparison.json",
                          {label: {k: v for k, v in r.items() if k != "captions"} for label, r in results.items()})
    for label in results:
        click.echo(f"results: {Path(opts.output) / label / 'results.json'}")


# ------------------------------------------------------------------------------------------------------------ score

@click.group("score")
def score_group():
    """Score POPE answers or CHAIR captions produced by another tool."""


@score_group.command("pope")
@click.option("--answers", required=True, type=click.Path(dir_okay=False),
              help="JSON lines with question_id and the answer in 'answer' or 'text'.")
@click.option("--questions", required=True, type=click.Path(dir_okay=False),
              help="The question file (question_id, image, text, label).")
@click.option("--output", required=True, type=click.Path(dir_okay=False))
@click.option("--parser", type=click.Choice(sorted(P.PARSERS)), default="official", show_default=True)
def score_pope_cmd(answers, questions, output, parser):
    """Accuracy, precision, recall, F1 and yes-ratio of answers against a POPE question file."""
    from .scoring import score_pope_files
    from .ui import pope_table, show

    res = score_pope_files(answers, questions, output, parser)
    show(pope_table(f"POPE ({Path(answers).name}, parser {parser})",
                    {"answers": {"splits": {res["protocol"]["split"]: res}, "mean": res}}))
    click.echo(f"results: {output}")


@score_group.command("chair")
@click.option("--captions", required=True, type=click.Path(dir_okay=False),
              help="JSON lines (or a JSON list) with image_id and caption.")
@click.option("--coco-annotations", required=True, type=click.Path(),
              help="Directory with instances_*.json and captions_*.json (all found are loaded).")
@click.option("--output", required=True, type=click.Path(dir_okay=False))
@click.option("--synonyms", type=click.Path(dir_okay=False), default=None,
              help="JSON {category: [synonyms]} replacing the COCO vocabulary.")
@click.option("--lemmatizer", type=click.Choice(["lemminflect", "nltk"]), default="lemminflect", show_default=True)
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None)
@click.option("--no-cache", is_flag=True, help="Rebuild the ground truth instead of using/writing the cache.")
@click.option("--image-id-key", default="image_id", show_default=True)
@click.option("--caption-key", default="caption", show_default=True)
def score_chair_cmd(captions, coco_annotations, output, synonyms, lemmatizer, cache_dir, no_cache, image_id_key,
                    caption_key):
    """CHAIR_s, CHAIR_i, recall, precision, F1 and length of captions against COCO annotations."""
    from .scoring import score_chair_files
    from .ui import chair_table, show

    res = score_chair_files(captions, coco_annotations, output, synonyms=synonyms, lemmatizer=lemmatizer,
                            cache_dir=cache_dir, use_cache=not no_cache, image_id_key=image_id_key,
                            caption_key=caption_key)
    show(chair_table(f"CHAIR ({Path(captions).name})", {"captions": res}))
    click.echo(f"results: {output}")
