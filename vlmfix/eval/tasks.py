"""POPE and CHAIR evaluation runs: inputs → samples → (patched) generation → merged samples → metrics → results.

Every input is checked before the first token is generated (annotation shape, categories, images, question files), so
a bad input costs seconds and leaves no results file; results are written atomically once all samples exist.
"""

from __future__ import annotations

import dataclasses

import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from . import pope as P
from .coco import find_annotation_files, image_path, load_instances, resolve_instances_file
from .errors import EvalInputError
from .generate import Decoding, build_prompt, generate_batch, load_image, prompt_format
from .io import iter_records, read_jsonl, sha256_file, sha256_records, write_json_atomic, write_jsonl_atomic
from .methods import patched, split_carve
from .models import load_model, resolve_device
from .protocol import check_resumable, method_records, package_versions
from .runner import barrier, dist_info, has_previous_work, merge, run_samples

RUN_FILE = "run.json"
RESULTS = "results.json"


@dataclass
class ModelSpec:
    name: str = "testbed"
    device: str | None = None
    dtype: str | None = None
    device_map: str | None = None

    def load(self):
        _, _, local = dist_info()
        device = resolve_device(self.device, local)
        model, processor = load_model(self.name, device=device, dtype=self.dtype, device_map=self.device_map)
        return model, processor, device


@dataclass
class RunOptions:
    output: Path
    batch_size: int = 8
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    method_sets: list = field(default_factory=lambda: [("baseline", [])])


def default_world() -> Path:
    """The testbed's synthetic COCO-format world (``annotations/``, ``images/``)."""
    try:
        from vlmfix.testbed import default_eval_world
    except ImportError:
        raise EvalInputError("no --coco-annotations/--images given and the testbed world is not available in this "
                             "installation (vlmfix.testbed.default_eval_world); pass both options") from None
    return Path(default_eval_world())


def resolve_world(annotations, images, task: str):
    if annotations is None and images is None:
        root = default_world()
        ann = root / "annotations"
        return (ann / "instances_val.json" if task == "pope" else ann), root / "images"
    if annotations is None or images is None:
        raise EvalInputError("pass both --coco-annotations and --images (or neither, for the testbed world)")
    return Path(annotations), Path(images)


def _model_record(spec: ModelSpec, model, device) -> dict:
    dtype = next(model.parameters()).dtype
    return {"model": spec.name, "model_class": type(model).__name__, "dtype": str(dtype).replace("torch.", ""),
            "device": str(device), "device_map": spec.device_map}


def _prepare_run_dir(run_dir: Path, protocol: dict, opts: RunOptions):
    """Refuse to mix runs; with --overwrite start clean; with --resume check the recorded protocol."""
    rank, world, _ = dist_info()
    previous = run_dir / RUN_FILE
    if has_previous_work(run_dir) or (run_dir / RESULTS).exists():
        if opts.overwrite:
            barrier()
            if rank == 0:
                for name in ("shards", "samples.jsonl", RESULTS, RUN_FILE):
                    p = run_dir / name
                    shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        elif not opts.resume:
            raise EvalInputError(f"{run_dir} already holds samples from an earlier run; pass --resume to continue "
                                 "it, --overwrite to start again, or another --output")
        elif previous.is_file():
            check_resumable(json.loads(previous.read_text()), protocol)
    barrier()
    if rank == 0:
        write_json_atomic(previous, protocol)


def _execute(samples, work, score, protocol_base, model, opts: RunOptions, label: str, cfgs, task: str):
    rank, world, _ = dist_info()
    run_dir = Path(opts.output) / label
    protocol = {**protocol_base, "methods": method_records(cfgs), "world_size": world}
    _prepare_run_dir(run_dir, protocol, opts)
    from .ui import progress_factory

    bar = progress_factory(f"{task} {label}", enabled=opts.progress and rank == 0)
    _, carve = split_carve(cfgs)
    with patched(model, cfgs):
        run_samples(samples, lambda batch: work(batch, carve), run_dir, batch_size=opts.batch_size, progress=bar)
    barrier()
    result = None
    if rank == 0:
        records = merge(samples, run_dir)
        result = {"task": task, "run": label, **score(records), "protocol": protocol,
                  "files": {"samples": str(run_dir / "samples.jsonl")}}
        write_json_atomic(run_dir / RESULTS, result)
    barrier()
    return result


# ------------------------------------------------------------------------------------------------------------- POPE

def load_question_files(paths) -> dict[str, dict]:
    """split → {"questions", "source", "sha256"} from the given files (JSON lines or a JSON array), unchanged."""
    out = {}
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise EvalInputError(f"question file not found: {p}")
        try:
            recs = list(iter_records(p))
        except (ValueError, json.JSONDecodeError) as exc:
            raise EvalInputError(f"{p}: {exc}; expected JSON lines with {list(P.QUESTION_KEYS)}") from None
        P.validate_questions(recs, str(p))
        name = P.split_name(p)
        if name in out:
            raise EvalInputError(f"two question files map to split {name!r}; name them after their split")
        out[name] = {"questions": recs, "source": str(p), "sha256": sha256_file(p)}
    return out


def pope_questions(*, annotations, questions_files, split, num_images, seed, template, output):
    """The question sets of a run; built sets are written to ``<output>/questions/coco_pope_<split>.json``."""
    if questions_files:
        return load_question_files(questions_files), {"construction": "given question files"}
    splits = P.SPLITS if split == "all" else (split,)
    coco = load_instances(resolve_instances_file(annotations))
    built = P.build_pope(coco, splits, num_images=num_images, seed=seed, template=template)
    out = {}
    rank, _, _ = dist_info()
    for s, qs in built.items():
        plain = [{k: q[k] for k in P.QUESTION_KEYS} for q in qs]
        path = Path(output) / "questions" / f"coco_pope_{s}.json"
        if rank == 0:
            write_jsonl_atomic(path, plain)
        out[s] = {"questions": plain, "source": str(path), "sha256": sha256_records(plain)}
    n_images = len({q["image"] for q in next(iter(built.values()))})
    info = {"construction": "built", "annotations": str(annotations), "num_images": n_images,
            "num_images_requested": num_images, "sample_num": 3, "template": template, "seed": seed,
            "rules": "official POPE (RUCAIBox/POPE HEAD: uniform random negatives redrawn until valid, "
                     "fixed article rule)"}
    return out, info


def run_pope(*, model_spec: ModelSpec, opts: RunOptions, annotations=None, images=None, questions_files=(),
             split="all", num_images=500, seed=0, parser="official", prompt_suffix="", template=P.TEMPLATE,
             decoding: Decoding = Decoding(), limit=None) -> dict[str, dict]:
    P.get_parser(parser)
    if questions_files and annotations is None and images is None:
        raise EvalInputError("--questions needs --images (the directory its image names refer to)")
    if not questions_files:
        annotations, images = resolve_world(annotations, images, "pope")
    images = Path(images)
    sets, construction = pope_questions(annotations=annotations, questions_files=questions_files, split=split,
                                        num_images=num_images, seed=seed, template=template, output=opts.output)
    samples = []
    for s, info in sets.items():
        qs = info["questions"][:limit] if limit else info["questions"]
        for q in qs:
            samples.append({"key": f"{s}:{q['question_id']}", "split": s, "question_id": q["question_id"],
                            "image": q["image"], "question": q["text"], "label": str(q["label"]).lower()})
    paths = {name: image_path(images, name) for name in dict.fromkeys(s["image"] for s in samples)}
    model, processor, device = model_spec.load()
    example = build_prompt(processor, samples[0]["question"] + prompt_suffix) if samples else ""
    base = {"task": "pope", **_model_record(model_spec, model, device), "parser": parser,
            "prompt": {"suffix": prompt_suffix, "format": prompt_format(processor), "example": example},
            "decoding": decoding.record(), "max_new_tokens": decoding.max_new_tokens,
            "batch_size": opts.batch_size, "seed": seed, "limit": limit, "images": str(images),
            "questions": {s: {"source": i["source"], "sha256": i["sha256"], "n": len(i["questions"])}
                          for s, i in sets.items()},
            "pope": construction, "versions": package_versions()}

    def work(batch, carve=None):
        imgs = [load_image(paths[s["image"]]) for s in batch]
        answers = generate_batch(model, processor, imgs, [s["question"] + prompt_suffix for s in batch], decoding,
                                 carve=carve)
        return [{**s, "answer": a} for s, a in zip(batch, answers)]

    def score(records):
        return score_pope_records(records, parser)

    results = {}
    for label, cfgs in opts.method_sets:
        results[label] = _execute(samples, work, score, base, model, opts, label, cfgs, "pope")
    return results


def score_pope_records(records, parser) -> dict:
    by_split: dict[str, list] = {}
    for r in records:
        by_split.setdefault(r["split"], []).append(r)
    splits = {s: P.score([r["answer"] for r in rs], [r["label"] for r in rs], parser) for s, rs in by_split.items()}
    return {"splits": splits, "mean": P.summarize(splits)}


# ------------------------------------------------------------------------------------------------------------- CHAIR

def read_image_ids(path) -> list:
    """Image ids from a JSON list, JSON lines with ``image_id`` (e.g. released caption files) or one id per line."""
    p = Path(path)
    if not p.is_file():
        raise EvalInputError(f"image id file not found: {p}")
    text = p.read_text(encoding="utf-8").strip()
    try:
        if text.startswith("["):
            data = json.loads(text)
            return [d["image_id"] if isinstance(d, dict) else int(d) for d in data]
        if text.startswith("{"):
            return [r["image_id"] for r in read_jsonl(p)]
        return [int(x) for x in text.split()]
    except (ValueError, KeyError, TypeError) as exc:
        raise EvalInputError(f"{p}: cannot read image ids ({exc}); expected a JSON list, JSON lines with "
                             "'image_id', or one integer per line") from None


def chair_images(annotations, images_dir, num_images, seed, image_ids=None) -> list[dict]:
    """The captioned images: a seeded draw from the annotated images present in the image directory (ascending id),
    or the given ids in their order."""
    inst_files, _ = find_annotation_files(annotations)
    if not inst_files:
        raise EvalInputError(f"no instances_*.json in {annotations}; CHAIR needs COCO instance annotations")
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise EvalInputError(f"image directory not found: {images_dir}")
    by_id = {}
    for f in inst_files:
        for im in load_instances(f).dataset["images"]:
            by_id.setdefault(im["id"], im.get("file_name", f"{im['id']}.jpg"))
    if image_ids is not None:
        out = []
        for i in image_ids:
            if i not in by_id:
                raise EvalInputError(f"image id {i} is not in the instance annotations of {annotations}")
            out.append({"image_id": i, "image": image_path(images_dir, by_id[i]).name})
        return out
    present = set(p.name for p in images_dir.iterdir())
    pool = [{"image_id": i, "image": by_id[i]} for i in sorted(by_id) if by_id[i] in present]
    if not pool:
        raise EvalInputError(f"none of the annotated images is in {images_dir}; expected the COCO image files")
    return random.Random(seed).sample(pool, min(num_images, len(pool)))


def run_chair(*, model_spec: ModelSpec, opts: RunOptions, annotations=None, images=None, num_images=500, seed=0,
              prompt="Please describe this image in detail.", decoding: Decoding = Decoding(max_new_tokens=512),
              image_ids=None, synonyms=None, lemmatizer="lemminflect", cache_dir=None, limit=None) -> dict:
    from .chair import ChairEvaluator
    from .ui import iter_progress

    if annotations is None and images is None and synonyms is None:
        # a synthetic world names its own objects; it may ship their synonyms next to its annotations
        for cand in (default_world() / "annotations" / "synonyms.json", default_world() / "synonyms.json"):
            if cand.is_file():
                synonyms = cand
                break
    annotations, images = resolve_world(annotations, images, "chair")
    if Path(annotations).is_file():
        annotations = Path(annotations).parent
    rank, _, _ = dist_info()
    evaluator = ChairEvaluator(annotations, synonyms=synonyms, lemmatizer=lemmatizer, cache_dir=cache_dir,
                               progress=lambda xs, d: iter_progress(xs, d, enabled=opts.progress and rank == 0))
    ids = read_image_ids(image_ids) if image_ids else None
    chosen = chair_images(annotations, images, num_images, seed, ids)
    if limit:
        chosen = chosen[:limit]
    samples = [{"key": str(c["image_id"]), **c} for c in chosen]
    model, processor, device = model_spec.load()
    base = {"task": "chair", **_model_record(model_spec, model, device),
            "prompt": {"text": prompt, "format": prompt_format(processor), "example": build_prompt(processor, prompt)},
            "decoding": decoding.record(), "max_new_tokens": decoding.max_new_tokens,
            "batch_size": opts.batch_size, "seed": seed, "limit": limit, "images": str(images),
            "image_ids": {"source": str(image_ids) if image_ids else f"seeded sample of {num_images}",
                          "n": len(samples), "sha256": sha256_records([{"image_id": s["image_id"]} for s in samples])},
            "chair": evaluator.protocol(), "versions": package_versions()}

    def work(batch, carve=None):
        imgs = [load_image(Path(images) / s["image"]) for s in batch]
        if carve is not None:  # captions, not short answers: no answer suffix, the caption budget
            carve = dataclasses.replace(carve, answer_suffix="", max_new_tokens=decoding.max_new_tokens)
        caps = generate_batch(model, processor, imgs, [prompt] * len(batch), decoding, carve=carve)
        return [{**s, "caption": c} for s, c in zip(batch, caps)]

    def score(records):
        return evaluator.score([{"image_id": r["image_id"], "caption": r["caption"]} for r in records])

    results = {}
    for label, cfgs in opts.method_sets:
        results[label] = _execute(samples, work, score, base, model, opts, label, cfgs, "chair")
    return results
