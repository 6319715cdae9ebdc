"""Stage 10: the emotion label a free-text model output states, or None when it states none.

An audio LLM answers in sentences, so before scoring each output is mapped to
one of the core labels.  The default is a rule extractor, deterministic and
free; the paper's own method (C²SER §V-B2: an LLM reads the output with the
``label_extraction`` prompt) is an option through any teacher backend.

The rules, in order:

1. A *mention* is a word form of a label from
   :data:`local.reasoning.targets.LABEL_FORMS` ("angry" or "anger" or 生气),
   English forms as whole words in any case ("unhappy" is not "happy").
2. A mention is *negated*, and ignored, when a negation word stands among
   the three words before it in the same clause ("not angry", "doesn't sound
   sad", "no anger", "anger rather than sadness" negates sadness), or, for a
   Chinese form, when 不 / 没 / 未 is among the three characters before it
   (不开心).  Clauses end at punctuation and at "but" / "however" /
   "although" / "though" / "yet".
3. A *conclusion cue* is a phrase that introduces the answer: "inferred to
   be", "the emotion is / was", "emotion:", "label:", "Distribution:" (its
   most likely label comes first), "therefore", "in conclusion", 推断为,
   情感是 ...  Explicit CoT describes the evidence first (a "happy"
   text said in a flat voice) and concludes last, so the answer is the first
   non-negated mention after the last cue that is followed by one.
4. Without such a cue, the last non-negated mention, for the same reason.
5. No non-negated mention at all: None ("invalid").
"""
from __future__ import annotations

import logging
import re
from functools import lru_cache
from typing import Sequence

from local.data.labels import EMOTIONS
from local.reasoning.prompts import render
from local.reasoning.checks import LABEL_FORMS
from local.reasoning.teacher import Request, Teacher

log = logging.getLogger(__name__)

METHODS = ("rules", "llm")


@lru_cache(maxsize=None)
def _forms(labels: tuple[str, ...]) -> tuple[re.Pattern | None, dict[str, str], dict[str, list[str]]]:
    """(the regex of the labels' English forms, {form: label}, {label: Chinese forms}) of one label set."""
    forms = {label: LABEL_FORMS.get(label, (label,)) for label in labels}
    ascii_forms = sorted((f for fs in forms.values() for f in fs if f.isascii()), key=len, reverse=True)
    # Longest form first, so "happiness" is one mention and not "happi" + rest.
    regex = re.compile(r"\b(" + "|".join(map(re.escape, ascii_forms)) + r")\b", re.IGNORECASE) if ascii_forms else None
    return (regex, {f.lower(): label for label, fs in forms.items() for f in fs},
            {label: [f for f in fs if not f.isascii()] for label, fs in forms.items()})


NEGATION_WINDOW = 3  # words (English) or characters (Chinese) before a mention
NEGATORS = {"not", "no", "never", "without", "nor", "neither", "hardly", "barely", "nothing", "cannot",
            "than", "instead"}
CJK_NEGATORS = "不没未"
_CLAUSE_END = re.compile(r"[.,;:!?\n。，；：！？]|\b(?:but|however|although|though|yet)\b", re.IGNORECASE)
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
CONCLUSION_CUES = re.compile(
    r"\binferred\s+(?:to\s+be|as)\b"
    r"|\bemotion(?:al\s+state)?(?:\s+(?:here|expressed|conveyed|of\s+the\s+speaker))?"
    r"\s+(?:is|was|would\s+be|seems\s+to\s+be|appears\s+to\s+be)\b"
    r"|\b(?:emotion|label|distribution)\s*:"
    r"|\b(?:therefore|thus|hence|in\s+conclusion)\b"
    r"|(?:推断|判断)(?:为|是|出)|情[感绪](?:是|为|:|：)",
    re.IGNORECASE)


def mentions(text: str, labels: Sequence[str] = EMOTIONS) -> list[tuple[int, int, str]]:
    """(start, end, label) of every word form of a label of ``labels`` in ``text``, in order."""
    regex, form_label, cjk_forms = _forms(tuple(labels))
    found = [] if regex is None else [(m.start(), m.end(), form_label[m.group(1).lower()]) for m in regex.finditer(text)]
    for label, forms in cjk_forms.items():
        for form in forms:
            found += [(m.start(), m.end(), label) for m in re.finditer(re.escape(form), text)]
    return sorted(found)


def is_negated(text: str, start: int) -> bool:
    """Whether a negation governs the mention starting at ``start`` (rule 2 of the module doc)."""
    clause = _CLAUSE_END.split(text[:start])[-1]
    if not text[start].isascii():
        return any(c in CJK_NEGATORS for c in clause[-NEGATION_WINDOW:])
    words = _WORD.findall(clause.lower())[-NEGATION_WINDOW:]
    return any(w in NEGATORS or w.endswith("n't") for w in words)


def concluding_mention(text: str | None, labels: Sequence[str] = EMOTIONS) -> tuple[int, str] | None:
    """(where it starts, label) of the mention a free-text output concludes with, or None (the module
    doc's rules); :func:`extract_label` is its label, and inference reads the distribution at its place."""
    if not text:
        return None
    kept = [(start, label) for start, _, label in mentions(text, labels) if not is_negated(text, start)]
    if not kept:
        return None
    for cue in reversed(list(CONCLUSION_CUES.finditer(text))):
        after = [(start, label) for start, label in kept if start >= cue.end()]
        if after:
            return after[0]
    return kept[-1]


def extract_label(text: str | None, labels: Sequence[str] = EMOTIONS) -> str | None:
    """The label of ``labels`` (the model's classes) a free-text output concludes with, or None (see the
    module doc for the rules): a word of a class the model was not trained on is not an answer."""
    found = concluding_mention(text, labels)
    return found[1] if found else None


def explain(text: str | None, labels: Sequence[str] = EMOTIONS) -> tuple[str | None, str | None]:
    """(the label ``extract_label`` reads, None) or (None, why it reads none): what a decode record keeps as
    ``pred`` and ``pred_why``, so a user need not parse sentences."""
    label = extract_label(text, labels)
    if label is not None:
        return label, None
    if not text or not text.strip():
        return None, "empty output"
    if mentions(text, labels):
        return None, "every label it names is negated"
    return None, f"names none of the labels ({', '.join(labels)})"


def extract_labels(texts: Sequence[str], method: str = "rules", teacher: Teacher | None = None,
                   labels: Sequence[str] = EMOTIONS) -> list[str | None]:
    """One label (or None) per output.

    ``method="llm"`` asks ``teacher`` with the paper's extraction prompt, once
    per distinct output, and reads its answer with the rules (an LLM may say
    "Anger." or "The label is anger"); an unanswered request is invalid.
    """
    if method == "rules":
        return [extract_label(t, labels) for t in texts]
    if method != "llm":
        raise ValueError(f"label extraction method must be one of {METHODS}, got '{method}'")
    if teacher is None:
        raise ValueError("label extraction with method 'llm' needs a teacher")
    distinct = list(dict.fromkeys(t for t in texts if t and t.strip()))
    requests = [Request(key=f"label_extraction {i}", type="label_extraction",
                        prompt=render("label_extraction", text=t, labels=", ".join(labels))) for i, t in enumerate(distinct)]
    answers = teacher.generate(requests) if requests else []
    if len(answers) != len(requests):
        raise RuntimeError(f"{teacher.name} returned {len(answers)} answers for {len(requests)} requests")
    unanswered = sum(a is None for a in answers)
    if unanswered:
        log.warning("%s left %d of %d extraction requests unanswered: those outputs count as invalid",
                    teacher.name, unanswered, len(requests))
    label_of = {t: extract_label(a, labels) for t, a in zip(distinct, answers)}
    return [label_of.get(t) for t in texts]
