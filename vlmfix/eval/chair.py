"""CHAIR (Rohrbach et al., 2018) exactly as the reference implementation counts it.

Vocabulary: the 80 COCO categories with the reference synonym table (``data/chair_synonyms.txt``, kept verbatim with
its quirks: ``" motor bike"`` and ``" cheesecake"`` carry a leading space and so never match, ``"iPhone"`` is never
matched after lowercasing, ``"stove top oven"`` is three words and so never merged, ``"televison"`` is misspelt), the
hard-coded two-word phrases (greedy left-to-right bigram merge), ``baby/adult <animal>`` → animal,
``passenger jet/train`` → jet/train, ``bow tie`` → tie, ``toilet seat`` → toilet, and the rule that drops every
``seat`` from a caption that also mentions a toilet.

Per caption: mentions = merged lemma tokens found in the vocabulary, mapped to their category ("node word"), repeats
kept. Ground truth per image = instance categories ∪ node words of the reference captions. Metrics over a caption set:
CHAIR_s = captions with a hallucinated mention / captions; CHAIR_i = hallucinated mentions / all mentions; recall =
Σ distinct correct node words / Σ ground-truth objects; precision = Σ distinct correct / Σ distinct mentioned; F1 of
the two; len = mean tokens per caption after the bigram merge (punctuation tokens included, as the reference counts).

Building the ground truth tokenises every reference caption (minutes for COCO train+val), so it is cached on disk,
keyed by the annotation files (path, size, mtime), the vocabulary and the lemmatiser.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .coco import find_annotation_files, load_captions, load_instances
from .errors import EvalInputError
from .text import make_lemmatizer

CACHE_VERSION = 1

COCO_DOUBLE_WORDS = (
    "motor bike", "motor cycle", "air plane", "traffic light", "street light", "traffic signal", "stop light",
    "fire hydrant", "stop sign", "parking meter", "suit case", "sports ball", "baseball bat", "baseball glove",
    "tennis racket", "wine glass", "hot dog", "cell phone", "mobile phone", "teddy bear", "hair drier",
    "potted plant", "bow tie", "laptop computer", "stove top oven", "home plate", "train track",
)
ANIMAL_WORDS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal", "cub")
VEHICLE_WORDS = ("jet", "train")


@dataclass
class Vocabulary:
    """Synonym → category table plus the phrase table used to merge multi-word names."""

    inverse: dict[str, str]
    phrases: dict[str, str]
    max_phrase: int = 2
    coco_rules: bool = True
    source: str = "coco"
    objects: frozenset = field(init=False)

    def __post_init__(self):
        self.objects = frozenset(self.inverse)

    def signature(self) -> str:
        blob = json.dumps([sorted(self.inverse.items()), sorted(self.phrases.items()), self.max_phrase,
                           self.coco_rules], ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def categories(self) -> set[str]:
        return set(self.inverse.values())


def coco_vocabulary() -> Vocabulary:
    """The reference table, parsed as the reference parses it (``line.strip().split(', ')``, first entry = node)."""
    text = resources.files("vlmfix.eval").joinpath("data/chair_synonyms.txt").read_text(encoding="utf-8")
    inverse = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        entries = line.strip().split(", ")
        for s in entries:
            inverse[s] = entries[0]
    phrases = {w: w for w in COCO_DOUBLE_WORDS}
    for a in ANIMAL_WORDS:
        phrases[f"baby {a}"] = a
        phrases[f"adult {a}"] = a
    for v in VEHICLE_WORDS:
        phrases[f"passenger {v}"] = v
    phrases["bow tie"] = "tie"
    phrases["toilet seat"] = "toilet"
    phrases["wine glas"] = "wine glass"
    return Vocabulary(inverse, phrases, 2, True, "coco")


def vocabulary_from_file(path) -> Vocabulary:
    """A vocabulary for a non-COCO world: JSON ``{category: [synonyms...]}``; multi-word names are merged as
    phrases (longest first); the COCO-specific rules (baby/adult, toilet seat) are not applied."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EvalInputError(f"synonyms file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise EvalInputError(f"{path} is not valid JSON ({exc.msg}); expected {{category: [synonyms]}}") from None
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise EvalInputError(f"{path}: expected a JSON object mapping each category to a list of synonyms")
    inverse, phrases = {}, {}
    for cat, syns in data.items():
        for s in [cat, *syns]:
            s = str(s).strip().lower()
            inverse[s] = cat
            if " " in s:
                phrases[s] = s
    max_phrase = max([len(p.split()) for p in phrases] or [2])
    return Vocabulary(inverse, phrases, max_phrase, False, f"file:{path.name}")


class CaptionParser:
    """Caption → (vocabulary words, node words, merged tokens), the reference's ``caption_to_words``."""

    def __init__(self, vocab: Vocabulary, lemmatizer: str = "lemminflect"):
        self.lemmatizer = lemmatizer
        self._lemmas = make_lemmatizer(lemmatizer, phrases=frozenset(vocab.phrases))
        self.vocab = vocab if vocab.coco_rules else self._with_lemma_forms(vocab)

    def _with_lemma_forms(self, vocab: Vocabulary) -> Vocabulary:
        """A custom table may list only inflected forms ("mugs"); captions are matched after lemmatising, so the
        lemmatised form of every entry is added too (the COCO table is used exactly as the reference has it)."""
        inverse, phrases = dict(vocab.inverse), dict(vocab.phrases)
        for entry, cat in vocab.inverse.items():
            lemma = " ".join(self._lemmas(entry))
            if lemma and lemma not in inverse:
                inverse[lemma] = cat
                if " " in lemma:
                    phrases[lemma] = lemma
        max_phrase = max([len(p.split()) for p in phrases] or [2])
        return Vocabulary(inverse, phrases, max_phrase, False, vocab.source)

    def __call__(self, caption: str):
        words = self._lemmas(caption)
        merged, i, phrases, n_max = [], 0, self.vocab.phrases, self.vocab.max_phrase
        while i < len(words):
            for n in range(n_max, 1, -1):
                cand = " ".join(words[i:i + n])
                if len(words) - i >= n and cand in phrases:
                    merged.append(phrases[cand])
                    i += n
                    break
            else:
                merged.append(words[i])
                i += 1
        kept = merged
        if self.vocab.coco_rules and "toilet" in kept and "seat" in kept:
            kept = [w for w in kept if w != "seat"]
        found = [w for w in kept if w in self.vocab.objects]
        return found, [self.vocab.inverse[w] for w in found], merged


def _file_key(paths) -> list:
    return [[str(Path(p).resolve()), os.path.getsize(p), os.stat(p).st_mtime_ns] for p in paths]


def default_cache_dir() -> Path:
    return Path(os.environ.get("VLMFIX_CACHE", Path.home() / ".cache" / "vlmfix")) / "chair"


_MEMORY: dict[str, dict] = {}


def build_ground_truth(annotations, vocab: Vocabulary, parser: CaptionParser, *, cache_dir=None,
                       use_cache: bool = True, progress=None) -> dict[int, frozenset]:
    """image_id → set of node words, from every ``instances_*``/``captions_*`` file found (cached)."""
    inst_files, cap_files = find_annotation_files(annotations)
    if not inst_files and not cap_files:
        raise EvalInputError(f"no instances_*.json or captions_*.json in {annotations}; CHAIR needs COCO-format "
                             "instance and caption annotations")
    key_blob = json.dumps({"v": CACHE_VERSION, "files": _file_key(inst_files + cap_files),
                           "vocab": vocab.signature(), "lemmatizer": parser.lemmatizer})
    key = hashlib.sha256(key_blob.encode()).hexdigest()[:24]
    if use_cache and key in _MEMORY:
        return _MEMORY[key]
    cache_path = Path(cache_dir or default_cache_dir()) / f"gt-{key}.pkl"
    if use_cache and cache_path.is_file():
        try:
            with open(cache_path, "rb") as f:
                gt = pickle.load(f)
            _MEMORY[key] = gt
            return gt
        except Exception:
            pass  # a damaged cache is rebuilt
    objects: dict[int, set] = {}
    for path in inst_files:
        coco = load_instances(path)
        names = {c["id"]: c["name"] for c in coco.dataset["categories"]}
        for cid, name in names.items():
            if name not in vocab.inverse:
                raise EvalInputError(f"{path}: category {name!r} is not in the CHAIR vocabulary ({vocab.source}); "
                                     "pass --synonyms with a {category: [synonyms]} JSON for non-COCO categories")
        for img in coco.dataset["images"]:
            objects.setdefault(img["id"], set())
        for ann in coco.dataset["annotations"]:
            objects.setdefault(ann["image_id"], set()).add(vocab.inverse[names[ann["category_id"]]])
    caps = [c for path in cap_files for c in load_captions(path)]
    it = progress(caps, "reference captions") if progress else caps
    for image_id, caption in it:
        objects.setdefault(image_id, set()).update(parser(caption)[1])
    gt = {k: frozenset(v) for k, v in objects.items()}
    if use_cache:
        _MEMORY[key] = gt
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=cache_path.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                pickle.dump(gt, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, cache_path)
        except OSError:
            pass  # caching is an optimisation; a read-only home must not fail the evaluation
    return gt


def score_captions(captions: list[dict], gt: dict, parser: CaptionParser) -> dict:
    """Metrics and per-caption details for ``[{"image_id", "caption"}]``."""
    n_caps = n_hall_caps = n_hall = n_words = n_tokens = 0
    n_recalled = n_gt = n_mentioned_unique = 0
    details = []
    for rec in captions:
        image_id, caption = rec["image_id"], rec["caption"]
        if image_id not in gt:
            raise EvalInputError(f"image_id {image_id!r} is not in the annotations; captions must refer to images "
                                 "of the given COCO annotation files")
        gt_objects = gt[image_id]
        _, nodes, merged = parser(caption)
        hallucinated = [w for w in nodes if w not in gt_objects]
        recalled = {w for w in nodes if w in gt_objects}
        n_caps += 1
        n_tokens += len(merged)
        n_words += len(nodes)
        n_hall += len(hallucinated)
        n_hall_caps += bool(hallucinated)
        n_recalled += len(recalled)
        n_gt += len(gt_objects)
        n_mentioned_unique += len(set(nodes))
        details.append({"image_id": image_id, "caption": caption, "mentioned": nodes,
                        "hallucinated": hallucinated, "gt": sorted(gt_objects)})

    def div(a, b):
        return a / b if b else 0.0

    recall, precision = div(n_recalled, n_gt), div(n_recalled, n_mentioned_unique)
    metrics = {
        "chair_s": div(n_hall_caps, n_caps),
        "chair_i": div(n_hall, n_words),
        "recall": recall,
        "precision": precision,
        "f1": div(2 * precision * recall, precision + recall),
        "len": div(n_tokens, n_caps),
        "num_captions": n_caps,
        "mentions": n_words,
        "hallucinated_mentions": n_hall,
    }
    return {"metrics": metrics, "captions": details}


class ChairEvaluator:
    """Vocabulary + parser + cached ground truth; ``evaluator.score(captions)``."""

    def __init__(self, annotations, *, synonyms=None, lemmatizer: str = "lemminflect", cache_dir=None,
                 use_cache: bool = True, progress=None):
        vocab = vocabulary_from_file(synonyms) if synonyms else coco_vocabulary()
        try:
            self.parser = CaptionParser(vocab, lemmatizer)
        except (RuntimeError, ValueError) as exc:
            raise EvalInputError(str(exc)) from None
        self.vocab = self.parser.vocab
        self.annotations = str(annotations)
        self.gt = build_ground_truth(annotations, self.vocab, self.parser, cache_dir=cache_dir,
                                     use_cache=use_cache, progress=progress)

    def score(self, captions: list[dict]) -> dict:
        return score_captions(captions, self.gt, self.parser)

    def protocol(self) -> dict:
        inst, caps = find_annotation_files(self.annotations)
        return {"vocabulary": self.vocab.source, "vocabulary_signature": self.vocab.signature(),
                "lemmatizer": self.parser.lemmatizer, "annotations": [str(p) for p in inst + caps]}
