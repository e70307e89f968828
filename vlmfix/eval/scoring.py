"""Scoring files produced elsewhere (other harnesses, released outputs) with the same rules as our own runs."""

from __future__ import annotations

import json
from pathlib import Path

from . import pope as P
from .errors import EvalInputError
from .io import iter_records, sha256_file, write_json_atomic
from .protocol import package_versions


def _records(path, what):
    p = Path(path)
    if not p.is_file():
        raise EvalInputError(f"{what} file not found: {p}")
    try:
        return list(iter_records(p))
    except (ValueError, json.JSONDecodeError) as exc:
        raise EvalInputError(f"{p}: {exc}") from None


def score_pope_files(answers, questions, output, parser="official") -> dict:
    """Match answers to questions by ``question_id``; every question needs exactly one answer."""
    P.get_parser(parser)
    qs = P.validate_questions(_records(questions, "question"), str(questions))
    ans = {}
    for i, a in enumerate(_records(answers, "answers")):
        if "question_id" not in a:
            raise EvalInputError(f"{answers}: line {i + 1} has no question_id; expected JSON lines with "
                                 "question_id and answer (or text)")
        text = a.get("answer", a.get("text"))
        if not isinstance(text, str):
            raise EvalInputError(f"{answers}: question {a['question_id']} has no string 'answer' or 'text'")
        if a["question_id"] in ans:
            raise EvalInputError(f"{answers}: duplicate answer for question {a['question_id']}")
        ans[a["question_id"]] = text
    ids = {q["question_id"] for q in qs}
    missing = [q["question_id"] for q in qs if q["question_id"] not in ans]
    extra = [k for k in ans if k not in ids]
    if missing or extra:
        raise EvalInputError(f"answers and questions do not match: {len(missing)} questions without an answer "
                             f"(first {missing[:3]}), {len(extra)} answers to unknown questions (first {extra[:3]})")
    res = P.score([ans[q["question_id"]] for q in qs], [str(q["label"]) for q in qs], parser)
    res["protocol"] = {"task": "pope", "parser": parser, "split": P.split_name(questions),
                       "answers": {"path": str(answers), "sha256": sha256_file(answers)},
                       "questions": {"path": str(questions), "sha256": sha256_file(questions), "n": len(qs)},
                       "versions": package_versions()}
    write_json_atomic(output, res)
    return res


def score_chair_files(captions, annotations, output, *, synonyms=None, lemmatizer="lemminflect", cache_dir=None,
                      use_cache=True, image_id_key="image_id", caption_key="caption") -> dict:
    from .chair import ChairEvaluator

    caps = []
    for i, r in enumerate(_records(captions, "captions")):
        if image_id_key not in r or not isinstance(r.get(caption_key), str):
            raise EvalInputError(f"{captions}: record {i + 1} needs {image_id_key!r} and a string {caption_key!r}")
        caps.append({"image_id": r[image_id_key], "caption": r[caption_key]})
    evaluator = ChairEvaluator(annotations, synonyms=synonyms, lemmatizer=lemmatizer, cache_dir=cache_dir,
                               use_cache=use_cache)
    res = evaluator.score(caps)
    res["protocol"] = {"task": "chair", **evaluator.protocol(),
                       "captions": {"path": str(captions), "sha256": sha256_file(captions), "n": len(caps)},
                       "versions": package_versions()}
    write_json_atomic(output, res)
    return res
