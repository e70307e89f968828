"""Which objects an answer mentions, where in the text, and which of them are not in the picture.

For annotated pictures (the testbed's example scenes, or any COCO-format folder) an answer's object words are checked
against the ground truth the way CHAIR checks them: the same synonym table, lemmas and two-word names, and the same
ground truth (instance categories plus objects named in the reference captions). The evaluator only reports *which*
categories a caption mentions; a demo must also say *where*, so the text is scanned word by word (and word pair by
word pair, for names like "traffic light") with the evaluator's own parser, which keeps the two views consistent.

When ``vlmfix.eval.chair`` is not importable, a plain matcher over the annotation file's category names (and the
world's ``synonyms.json`` when present, with simple plurals) stands in.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

HALLUCINATED = "hallucinated"
GROUNDED = "in image"
_WORD = re.compile(r"[A-Za-z]+(?:-[A-Za-z]+)*")


@dataclass(frozen=True)
class Mention:
    start: int
    end: int
    surface: str
    category: str


@dataclass(frozen=True)
class Truth:
    """Ground-truth objects of one annotated picture and the finder that reads answers against them."""

    image_id: int
    objects: frozenset
    finder: MentionFinder

    def judge(self, text: str) -> tuple[list[Mention], list[str]]:
        """(every mention, distinct hallucinated categories in order of first mention)."""
        mentions = self.finder.find(text)
        bad = [m.category for m in mentions if m.category not in self.objects]
        return mentions, list(dict.fromkeys(bad))


def highlight(text: str, truth: Truth | None) -> list[tuple[str, str | None]]:
    """``gr.HighlightedText`` segments: mentions labelled hallucinated / in image, the rest unlabelled."""
    if truth is None or not text:
        return [(text, None)] if text else []
    out, pos = [], 0
    for m in truth.finder.find(text):
        if m.start > pos:
            out.append((text[pos:m.start], None))
        out.append((text[m.start:m.end], HALLUCINATED if m.category not in truth.objects else GROUNDED))
        pos = m.end
    if pos < len(text):
        out.append((text[pos:], None))
    return out


class MentionFinder:
    """Object mentions with character spans, via the CHAIR parser when available."""

    def __init__(self, synonyms: dict[str, list[str]] | None = None, synonyms_file=None):
        self._parser = _chair_parser(str(synonyms_file) if synonyms_file else None)
        self._fallback = None
        if self._parser is None:
            table = {}
            for category, words in (synonyms or {}).items():
                for w in [category, *words]:
                    table[w.lower()] = category
            self._fallback = table

    @property
    def uses_chair(self) -> bool:
        return self._parser is not None

    def find(self, text: str) -> list[Mention]:
        words = [(m.start(), m.end(), m.group(0)) for m in _WORD.finditer(text)]
        out, i = [], 0
        while i < len(words):
            hit = None
            if i + 1 < len(words) and text[words[i][1]:words[i + 1][0]].isspace():  # two-word names first
                pair = f"{words[i][2]} {words[i + 1][2]}"
                category = self._lookup(pair, phrase=True)
                if category is not None:
                    hit = (words[i][0], words[i + 1][1], category, 2)
            if hit is None:
                category = self._lookup(words[i][2], phrase=False)
                if category is not None:
                    hit = (words[i][0], words[i][1], category, 1)
            if hit is None:
                i += 1
                continue
            start, end, category, n = hit
            out.append(Mention(start, end, text[start:end], category))
            i += n
        return out

    def _lookup(self, words: str, phrase: bool) -> str | None:
        """The category ``words`` name (one word, or a pair when ``phrase``), else None."""
        if self._parser is not None:
            _, nodes, merged = _parse(self._parser, words.lower())
            if phrase and len(merged) != 1:  # a pair counts only when the evaluator merges it into one name
                return None
            return nodes[0] if len(nodes) == 1 else None
        key = words.lower()
        for cand in (key, key[:-1] if key.endswith("s") else None, key[:-2] if key.endswith("es") else None):
            if cand and cand in self._fallback and (" " in cand) == phrase:
                return self._fallback[cand]
        return None


@lru_cache(maxsize=8)
def _chair_parser(synonyms_file: str | None = None):
    """The evaluator's parser over the COCO table, extended with a world's own synonyms (``synonyms.json``).

    COCO's table alone misses a world's words ("mugs" for cup in the testbed); the world's table alone misses the
    other 48 COCO categories, and a "train" on a kitchen counter is exactly the hallucination a user wants flagged.
    """
    try:
        from ..eval.chair import CaptionParser, Vocabulary, coco_vocabulary, vocabulary_from_file
    except ImportError:
        return None
    vocab = coco_vocabulary()
    if synonyms_file:
        extra = vocabulary_from_file(synonyms_file)
        inverse = {**extra.inverse, **vocab.inverse}  # COCO's mapping wins where both define a word
        phrases = {**extra.phrases, **vocab.phrases}
        vocab = Vocabulary(inverse, phrases, max(vocab.max_phrase, extra.max_phrase), vocab.coco_rules,
                           f"coco+{extra.source}")
    return CaptionParser(vocab)


_PARSE_LOCK = threading.Lock()


@lru_cache(maxsize=4096)
def _cached_parse(parser, words):
    return parser(words)


def _parse(parser, words):
    with _PARSE_LOCK:  # the lemmatiser's lazy tables are not guaranteed thread-safe on first use
        return _cached_parse(parser, words)


def warm_up() -> None:
    """Load the lemma tables now (about a second) so the first answer is not the one that pays for it."""
    parser = _chair_parser(None)
    if parser is not None:
        _parse(parser, "two dogs near a traffic light")


# --------------------------------------------------------------------------------------------- annotated scenes


@dataclass
class Example:
    path: Path
    image_id: int
    prompt: str


@dataclass
class SceneIndex:
    """A COCO-format folder (``images/`` + ``annotations/instances_*.json``): examples and their ground truth.

    Pictures are recognised by the SHA-1 of their bytes, because the browser hands back a copy of an example under
    another name; an upload of the very same file is recognised too.
    """

    root: Path
    split: str = "val"
    truth_by_id: dict = field(default_factory=dict)
    file_by_id: dict = field(default_factory=dict)
    _by_hash: dict | None = None
    _finder: MentionFinder | None = None

    @classmethod
    def load(cls, root, split: str = "val") -> SceneIndex:
        root = Path(root)
        inst_path = root / "annotations" / f"instances_{split}.json"
        if not inst_path.is_file():
            raise FileNotFoundError(f"{inst_path} not found; an examples folder needs COCO-format "
                                    f"annotations/instances_{split}.json and images/")
        inst = json.loads(inst_path.read_text(encoding="utf-8"))
        index = cls(root=root, split=split)
        index.file_by_id = {im["id"]: root / "images" / im["file_name"] for im in inst["images"]}
        synonyms_path = root / "annotations" / "synonyms.json"
        synonyms = json.loads(synonyms_path.read_text()) if synonyms_path.is_file() else {}
        names = {c["id"]: c["name"] for c in inst["categories"]}
        for name in names.values():
            synonyms.setdefault(name, [name])
        index._finder = MentionFinder(synonyms, synonyms_path if synonyms_path.is_file() else None)
        index.truth_by_id = index._ground_truth(inst, names)
        return index

    def _ground_truth(self, inst, names) -> dict:
        gt = None
        if self._finder.uses_chair:
            try:
                from ..eval.chair import build_ground_truth

                gt = build_ground_truth(self.root / "annotations", self._finder._parser.vocab, self._finder._parser)
            except Exception:  # a world the evaluator rejects still gets instance-level truth below
                gt = None
        if gt is None:
            objects: dict[int, set] = {im["id"]: set() for im in inst["images"]}
            for a in inst["annotations"]:
                objects.setdefault(a["image_id"], set()).add(names[a["category_id"]])
            gt = {k: frozenset(v) for k, v in objects.items()}
        return gt

    def examples(self, n: int = 8, prompts=("Please describe this image in detail.",)) -> list[Example]:
        """The first ``n`` pictures (by id) with at least one object, cycling through ``prompts``."""
        ids = [i for i in sorted(self.file_by_id) if self.truth_by_id.get(i) and self.file_by_id[i].is_file()]
        return [Example(self.file_by_id[i], i, prompts[k % len(prompts)]) for k, i in enumerate(ids[:n])]

    def truth_for_file(self, path) -> Truth | None:
        if path is None:
            return None
        image_id = self._hashes().get(_sha1(Path(path)))
        return self.truth(image_id) if image_id is not None else None

    def truth(self, image_id: int) -> Truth | None:
        objects = self.truth_by_id.get(image_id)
        return Truth(image_id, objects, self._finder) if objects is not None else None

    def _hashes(self) -> dict:
        if self._by_hash is None:
            self._by_hash = {_sha1(p): i for i, p in self.file_by_id.items() if p.is_file()}
        return self._by_hash


def _sha1(path: Path) -> str | None:
    try:
        return hashlib.sha1(path.read_bytes()).hexdigest()
    except OSError:
        return None


__all__ = ["Mention", "Truth", "MentionFinder", "SceneIndex", "Example", "highlight", "warm_up", "HALLUCINATED",
           "GROUNDED"]
