"""Caption tokenisation and lemmatisation for CHAIR, offline and without downloaded data.

The reference CHAIR (the Python 3 port used by OPERA, PAI, lmms-eval) runs ``nltk.word_tokenize`` (Punkt sentence
splitting + Penn Treebank word rules), ``nltk.pos_tag`` and the WordNet lemmatiser. Those need NLTK data files that are
downloaded at run time, so the default here is:

* sentences split after ``.``/``!``/``?`` + whitespace, except after a number, a single letter or a common title
  abbreviation followed by a word (Punkt's behaviour on lowercased text), then Treebank word rules;
* lemmas from ``lemminflect`` (its tables ship with the wheel). The part of speech is not tagged but inferred from
  which lemma tables know the word: a known noun gets its (shortest) noun lemma, as WordNet picks the shortest form;
  a word known only as a verb form (``skiing``, ``seated``, ``parked``) gets the verb lemma, as the tagger marks such
  words VBG/VBN in nearly every caption; an ``-ing`` word known as both ("training", "seating") is a verb unless a
  determiner-like word precedes it, and then a noun ("a bowling ball"); a modifier that completes a two-word object name keeps its surface form
  (``potted plant``, ``parking meter``).

Known differences from the nltk path (``lemmatizer="nltk"`` reproduces it when nltk and its data are installed):
an ``-ing``/``-ed`` word the tagger would call a noun or adjective ("a skiing trip") is still lemmatised as a verb;
lemminflect and WordNet disagree on a few irregular plurals (``oxen`` stays ``oxen``; both map to ``cow``).
"""

from __future__ import annotations

import re
from functools import lru_cache

# ----------------------------------------------------------------------------------------------- sentence splitting

_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "e.g", "i.e", "u.s", "etc", "prof", "inc", "ltd"}
_SENT_END = re.compile(r"([.!?]+)([\"')\]]*)(\s+)")


def split_sentences(text: str) -> list[str]:
    """Sentence spans, Punkt-like: no break after an abbreviation, or after a number/initial when a word follows."""
    out, start = [], 0
    for m in _SENT_END.finditer(text):
        end = m.end(2)
        before = text[start:m.start(1)].split()
        last = before[-1] if before else ""
        nxt = text[m.end():m.end() + 1]
        if m.group(1) == ".":
            word = last.lower().strip("\"'([")
            if word in _ABBREVIATIONS:
                continue
            if (word.isdigit() or (len(word) == 1 and word.isalpha())) and nxt.isalpha():
                continue
        out.append(text[start:end])
        start = m.end()
    if text[start:].strip():
        out.append(text[start:])
    return [s for s in (s.strip() for s in out) if s]


# ----------------------------------------------------------------------------------------------- Treebank word rules

_RULES_START = [
    (re.compile("([\u00ab\u201c\u2018\u201e]|`+)"), r" \1 "),
    (re.compile(r'^\"'), r"``"),
    (re.compile(r"(``)"), r" \1 "),
    (re.compile(r'([ \(\[{<])(\"|\'{2})'), r"\1 `` "),
    (re.compile(r"(?i)(?<!\w)(\')(?!(?:re|ve|ll|m|t|s|d|n)\b)(?=\w)"), r"\1 "),
]
_RULES_PUNCT = [
    (re.compile("([^\\.])(\\.)([\\]\\)}>\"'\u00bb\u201d\u2019 ]*)\\s*$"), r"\1 \2 \3 "),
    (re.compile(r"([:,])([^\d])"), r" \1 \2"),
    (re.compile(r"([:,])$"), r" \1 "),
    (re.compile(r"\.{2,}"), r" \g<0> "),
    (re.compile(r"[;@#$%&]"), r" \g<0> "),
    (re.compile("[\u2012-\u2015]"), r" \g<0> "),
    (re.compile(r"([^\.])(\.)([\]\)}>\"\']*)\s*$"), r"\1 \2\3 "),
    (re.compile(r"[?!]"), r" \g<0> "),
    (re.compile(r"([^'])' "), r"\1 ' "),
    (re.compile(r"[*]"), r" \g<0> "),
]
_RULES_BRACKETS = [(re.compile(r"[\]\[\(\)\{\}\<\>]"), r" \g<0> "), (re.compile(r"--"), r" -- ")]
_RULES_END = [
    (re.compile("([\u00bb\u201d\u2019])"), r" \1 "),
    (re.compile(r"''"), " '' "),
    (re.compile(r'"'), " '' "),
    (re.compile(r"\s+"), " "),
    (re.compile(r"([^' ])('[sS]|'[mM]|'[dD]|') "), r"\1 \2 "),
    (re.compile(r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) "), r"\1 \2 "),
]
_SPLIT_WORDS = [re.compile(p, re.I) for p in (
    r"\b(can)(?#X)(not)\b", r"\b(d)(?#X)('ye)\b", r"\b(gim)(?#X)(me)\b", r"\b(gon)(?#X)(na)\b",
    r"\b(got)(?#X)(ta)\b", r"\b(lem)(?#X)(me)\b", r"\b(more)(?#X)('n)\b", r"\b(wan)(?#X)(na)(?=\s)",
    r" ('t)(?#X)(is)\b", r" ('t)(?#X)(was)\b")]


def treebank_words(sentence: str) -> list[str]:
    """Penn Treebank word tokens of one sentence (as nltk's default word tokenizer produces them)."""
    s = sentence
    for rx, rep in _RULES_START:
        s = rx.sub(rep, s)
    for rx, rep in _RULES_PUNCT:
        s = rx.sub(rep, s)
    for rx, rep in _RULES_BRACKETS:
        s = rx.sub(rep, s)
    s = " " + s + " "
    for rx, rep in _RULES_END:
        s = rx.sub(rep, s)
    for rx in _SPLIT_WORDS:
        s = rx.sub(r" \1 \2 ", s)
    return s.split()


def word_tokenize(text: str) -> list[str]:
    return [w for sent in split_sentences(text) for w in treebank_words(sent)]


# ----------------------------------------------------------------------------------------------- lemmatisers

@lru_cache(maxsize=200_000)
def _candidates(word: str) -> tuple[str, tuple[str, ...]]:
    """(default lemma, every lemma lemminflect knows for the word)."""
    from lemminflect import getAllLemmas, getLemma

    if not word[:1].isalpha():
        return word, (word,)
    table = getAllLemmas(word)
    if "NOUN" in table:
        best = min(table["NOUN"], key=len)
    elif "VERB" in table:
        best = min(table["VERB"], key=len)
    elif "ADJ" in table or "ADV" in table or "AUX" in table or table:
        best = word
    else:
        oov = getLemma(word, upos="NOUN")
        best = min(oov, key=len) if oov else word
    alts = tuple(dict.fromkeys([best, word, *[x for v in table.values() for x in v]]))
    return best, alts


_NOUN_CONTEXT = {"a", "an", "the", "this", "that", "these", "those", "his", "her", "their", "its", "my", "your",
                 "our", "some", "any", "no", "of", "for", "each", "every", "'s"}


@lru_cache(maxsize=50_000)
def _verb_lemma(word: str) -> str | None:
    from lemminflect import getAllLemmas

    verbs = getAllLemmas(word).get("VERB")
    return min(verbs, key=len) if verbs else None


@lru_cache(maxsize=50_000)
def _noun_lemma(word: str) -> str | None:
    from lemminflect import getAllLemmas

    nouns = getAllLemmas(word).get("NOUN")
    return min(nouns, key=len) if nouns else None


def lemmatize_lemminflect(tokens: list[str], phrases=frozenset()) -> list[str]:
    """Lemmas of lowercased tokens. ``phrases`` (two-word object names) let a modifier keep the form that completes
    a phrase with the next lemma, as the tagger would tag such a modifier an adjective."""
    lemmas = [_candidates(t)[0] for t in tokens]
    for i, t in enumerate(tokens):
        # "-ing" words lemminflect knows as nouns too ("training", "seating"): a verb unless a determiner-like word
        # precedes it, the way the perceptron tagger decides in captions ("a man training" vs "a training session").
        if t.endswith("ing") and len(t) > 4:
            if i > 0 and tokens[i - 1] in _NOUN_CONTEXT:
                lemmas[i] = _noun_lemma(t) or t
            else:
                lemmas[i] = _verb_lemma(t) or lemmas[i]
    if phrases:
        for i in range(len(tokens) - 1):
            if f"{lemmas[i]} {lemmas[i + 1]}" in phrases:
                continue
            for alt in _candidates(tokens[i])[1]:
                if f"{alt} {lemmas[i + 1]}" in phrases:
                    lemmas[i] = alt
                    break
    return lemmas


class NltkLemmatizer:
    """The reference pipeline (word_tokenize → pos_tag → WordNet lemmatize); needs nltk and its data installed."""

    def __init__(self):
        try:
            import nltk
            from nltk.corpus import wordnet
            from nltk.stem import WordNetLemmatizer

            nltk.word_tokenize("a test.")
            nltk.pos_tag(["a", "test"])
            wordnet.ensure_loaded()
        except Exception as exc:  # ImportError or LookupError for missing data
            raise RuntimeError("lemmatizer 'nltk' needs nltk with punkt(_tab), averaged_perceptron_tagger(_eng) and "
                               f"wordnet data installed ({exc.__class__.__name__}); use the default 'lemminflect'") from None
        self._nltk, self._wn, self._wnl = nltk, wordnet, WordNetLemmatizer()

    def _pos(self, tag):
        wn = self._wn
        return {"J": wn.ADJ, "V": wn.VERB, "N": wn.NOUN, "R": wn.ADV}.get(tag[:1], wn.NOUN)

    def __call__(self, caption: str) -> list[str]:
        words = self._nltk.word_tokenize(caption.lower())
        return [self._wnl.lemmatize(w, pos=self._pos(t)) for w, t in self._nltk.pos_tag(words)]


LEMMATIZERS = ("lemminflect", "nltk")


def make_lemmatizer(name: str, phrases=frozenset()):
    """A callable caption → lowercased lemma tokens."""
    if name == "lemminflect":
        phrases = frozenset(phrases)
        return lambda caption: lemmatize_lemminflect(word_tokenize(caption.lower()), phrases)
    if name == "nltk":
        return NltkLemmatizer()
    raise ValueError(f"unknown lemmatizer {name!r}; expected one of {list(LEMMATIZERS)}")
