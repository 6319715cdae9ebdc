"""Stage 10: results tables, from hypotheses whose labels have been extracted.

``results.json`` is the machine-readable form every claim is checked against::

    {"provenance": {"code", "key", "inputs", "extract", "judge", "tables": {"<test_set>": {"teacher", "rows"}}},
     "tables": {"<test_set>": {"<row>": {"ua", "wa", "f1", "n", "rejected",
                              "subsets": {"<subset>": {"ua", "wa", "f1", "n"}, ...},
                              "sec_per_utt", "invalid_rate", "mean_words", "per_class"}}}}

A row is one system or baseline on one test set (``implicit``, ``explicit``,
``text_only``, ``attributes`` ...).  UA / WA / F1 / per-class accuracy come
from :mod:`local.eval.metrics` over the utterances that have a reference
label (``n`` of them; None and n 0 for an unlabelled set), an output with no
extractable label counting as wrong; subsets are the values of ``utt2subset``.
``invalid_rate`` (outputs with no label) and ``mean_words`` (output length:
whitespace-separated words, each CJK character one word) are over every
output, labelled or not.  ``sec_per_utt`` is the decode time from timing.json.
``rejected`` counts the test set's utterances that never reached the table:
the lines of its data dir's ``rejected`` (stages 1-2) plus timing.json's
``rejected`` (audio decoding could not read), so that nothing scored shrinks
unseen.

A row whose timing.json names the ``target`` type its prompt was trained on
has ``well_formed``, the share of its ``n_formatted`` outputs (all of them)
in that format (:func:`local.reasoning.targets.format_problem`).  A
``c2ser_explicit`` row on a set with ``utt2attr`` also has ``attr_words``:
how often the rate / pitch / volume words of its chain of thought ("at a
fast pace", "a high-pitched tone", "a soft volume") name the utterance's
stage-2 level, ``{"pitch", "loudness", "rate", "n", "n_total"}``, over the
``n`` of its ``n_total`` outputs that state all three (an ``unknown`` level is
not scored).

A row whose decode dir has ``hyp_dist`` (read-out distributions), on a test
set with ``utt2dist``, also has the ambiguity paper's Table 2 scores of
:func:`local.eval.metrics.distribution_scores` over the utterances that have
both: ``js`` (Jensen–Shannon divergence, log base 2, in [0, 1]), ``bc``
(Bhattacharyya coefficient), ``brier`` (per-class mean), ``ece`` (``score.ece_bins`` bins),
``acc_dist`` (the arg-max is a most-voted class) and ``n_dist``.  When some
row of a table has ``hyp_dist``, each row without these scores says why in
``dist_note`` (no hyp_dist, no utt2dist, no utterance in common).

With ``score.judge_rubrics`` a row also has ``judge``: the backend and the mean raw score of each rubric
key over the outputs the judge scored (e.g. ``{"backend": "offline", "empathy": 2.4, "n_judged": 284}``,
empathy on CogAudio's 1-4 scale), and ``not_judged``, the outputs it could not score.  The backend's name
follows every judge column of results.md (``empathy[offline]``): the offline judge is a rule stand-in,
and its numbers must never pass for a model judge's.

A multi-task system's row (timing.json names its ``task``) also has ``task`` and ``experiment``; its ASR
row has ``wer`` (:mod:`local.eval.asr_metrics`) and no UA / WA, its SQA row a judge score (local/bin/score.py).

``results.md`` has one table per test set (percentages; the distribution
scores, when a row has them, as fractions with acc % last), a line under it
that defines its columns and the rows' ``dist_note``, and
``confusion_<set>_<row>.png`` one confusion matrix per labelled row.
"""
from __future__ import annotations

import io
import json
import re
from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import numpy as np

from local.eval.metrics import INVALID, classification_scores, confusion, distribution_scores
from local.reasoning.offline import LEVEL_WORDS
from local.reasoning.checks import QUOTED, quotes_transcript
from local.reasoning.targets import format_problem
from local.utils.atomic import write_bytes_atomic, write_text_atomic

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

_WORDS = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\s\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
SUMMARY = ("ua", "wa", "f1", "n")
DIST_KEYS = {"js": "js", "bc": "bc", "brier": "brier", "ece": "ece", "acc": "acc_dist", "n": "n_dist"}


def count_words(text: str) -> int:
    """Words of an output: whitespace-separated runs, and every CJK character on its own."""
    return len(_WORDS.findall(text))


# --- the attribute words of an explicit chain of thought --------------------------------------

ATTR_KEYS = ("pitch", "loudness", "rate")  # utt2attr's keys; the offline teacher calls loudness "energy"
LEVELS = ("low", "medium", "high")
# The teachers' words (offline.LEVEL_WORDS) first, then what an LLM teacher or a model writes instead.
_SYNONYMS = {
    "rate": {"low": ("slow", "slower", "leisurely", "sluggish", "relaxed", "low"),
             "medium": ("moderate", "steady", "normal", "average", "medium", "even", "regular"),
             "high": ("fast", "faster", "rapid", "quick", "brisk", "hurried", "high")},
    "pitch": {"low": ("low-pitched", "deep", "low", "lowered"),
              "medium": ("mid-range", "moderately pitched", "moderate", "medium", "normal", "average", "mid"),
              "high": ("high-pitched", "raised", "high", "elevated")},
    "loudness": {"low": ("soft", "quiet", "low", "gentle", "faint", "weak", "subdued", "hushed"),
                 "medium": ("moderate", "normal", "medium", "average"),
                 "high": ("loud", "strong", "high", "raised", "powerful", "forceful", "intense")},
}
LEVEL_VOCAB = {attr: {level: tuple(dict.fromkeys([*LEVEL_WORDS["energy" if attr == "loudness" else attr][level],
                                                  *_SYNONYMS[attr][level]]))
                      for level in LEVELS} for attr in ATTR_KEYS}
# The nouns a level word describes: "a fast pace", "a high-pitched tone", "a soft volume", "low energy level".
_ATTR_NOUNS = {"rate": r"(?:(?:speaking|speech)\s+)?(?:paced?|rate|speed|tempo)",
               "pitch": r"(?:pitch|tone)",
               "loudness": r"(?:(?:volume|energy)(?:\s+level)?|loudness|level(?!\s+of))"}
_LINKS = r"(?:is|was|of|at|remains|stays|sounds|seems)"
_HEDGES = r"(?:(?:a|an|quite|rather|fairly|very|relatively|somewhat|slightly|mostly)\s+)*"


def _attr_patterns(attr: str) -> list[re.Pattern]:
    words = sorted((w for ws in LEVEL_VOCAB[attr].values() for w in ws), key=len, reverse=True)
    level = "(?P<level>" + "|".join(re.escape(w).replace(r"\ ", r"\s+") for w in words) + ")"
    noun = _ATTR_NOUNS[attr]
    patterns = [rf"\b{level}[\s-]+{noun}\b",                   # a fast pace, a soft volume
                rf"\b{noun}\s+{_LINKS}\s+{_HEDGES}{level}\b"]  # speed is high, a pitch of low
    named = [w for w in words if w.endswith("pitched")]             # says what it describes
    if named:
        patterns.append(r"\b(?P<level>" + "|".join(re.escape(w).replace(r"\ ", r"\s+") for w in named) + r")\b")
    return [re.compile(p, re.IGNORECASE) for p in patterns]


_ATTR_PATTERNS = {attr: _attr_patterns(attr) for attr in ATTR_KEYS}
_LEVEL_OF = {attr: {w: level for level, ws in LEVEL_VOCAB[attr].items() for w in ws} for attr in ATTR_KEYS}


def attribute_words(text: str) -> dict[str, str]:
    """{attribute: low | medium | high} of the first description of each of rate / pitch / volume in ``text``;
    an attribute it does not describe is absent."""
    found = {}
    for attr, patterns in _ATTR_PATTERNS.items():
        hits = [m for p in patterns for m in p.finditer(text)]
        if hits:
            word = " ".join(min(hits, key=lambda m: m.start())["level"].lower().split())
            found[attr] = _LEVEL_OF[attr][word]
    return found


def attr_word_scores(records: Sequence[Mapping], attrs: Mapping[str, Mapping[str, str]]) -> dict:
    """How often each attribute word names the utterance's utt2attr level, over the outputs that describe
    all three (``n`` of ``n_total``); a level other than Low / Medium / High (``unknown``) is not scored."""
    stated, right, scored = 0, dict.fromkeys(ATTR_KEYS, 0), dict.fromkeys(ATTR_KEYS, 0)
    for r in records:
        words = attribute_words(r["hyp"])
        if len(words) < len(ATTR_KEYS):
            continue
        stated += 1
        for attr in ATTR_KEYS:
            gold = str(attrs.get(r["utt"], {}).get(attr, "")).lower()
            if gold in LEVELS:
                scored[attr] += 1
                right[attr] += words[attr] == gold
    return {**{a: right[a] / scored[a] if scored[a] else None for a in ATTR_KEYS},
            "n": stated, "n_total": len(records)}


def distribution_row(records: Sequence[Mapping], gold: Mapping[str, Mapping[str, float]],
                     labels: Sequence[str], ece_bins: int = 15) -> dict:
    """The distribution scores (``DIST_KEYS`` names) of the records' "dist" against ``gold`` (utt -> {label: p}),
    over the utterances that have both; {} when none has."""
    both = [r for r in records if r["utt"] in gold]
    if not both:
        return {}
    known = set(labels)
    for r in both:
        for name, dist in (("read-out", r["dist"]), ("utt2dist", gold[r["utt"]])):
            unknown = sorted(set(dist) - known)
            if unknown:
                raise ValueError(f"{r['utt']}: {name} distribution has label(s) {unknown} outside {list(labels)}")
    scores = distribution_scores([r["dist"] for r in both], [gold[r["utt"]] for r in both], labels, n_bins=ece_bins)
    return {DIST_KEYS[k]: v for k, v in scores.items()}


def shared_distributions(gold: Mapping[str, Mapping[str, float]], labels: Sequence[str]
                         ) -> dict[str, dict[str, float]]:
    """The soft labels on ``labels`` alone, renormalised; an utterance with no mass there has none.  A test
    set of another corpus (cross-corpus) is scored on the labels it shares with the model."""
    known, out = set(labels), {}
    for utt, dist in gold.items():
        kept = {k: v for k, v in dist.items() if k in known}
        total = sum(kept.values())
        if total > 0:
            out[utt] = {k: v / total for k, v in kept.items()}
    return out


def quotation_scores(records: Sequence[Mapping]) -> dict:
    """How faithfully outputs quote: ``rate``, the share of outputs with a double-quoted span, and ``spoken``,
    of those with a transcript, the share whose quote is words of the sentence actually spoken (None when
    none quotes).  A small LM recalls training sentences and quotes them as if it had heard them."""
    quoting = [r for r in records if QUOTED.search(r["hyp"] or "")]
    checkable = [r for r in quoting if r.get("text")]
    return {"rate": len(quoting) / len(records) if records else None, "n": len(quoting),
            "spoken": (sum(quotes_transcript(r["hyp"], r["text"]) for r in checkable) / len(checkable)
                       if checkable else None)}


def score_row(records: Sequence[Mapping], preds: Sequence[str | None], labels: Sequence[str],
              timing: Mapping | None = None, gold_dists: Mapping[str, Mapping[str, float]] | None = None,
              ece_bins: int = 15, *, attrs: Mapping[str, Mapping[str, str]] | None = None,
              data_rejected: int = 0, dist_wanted: bool = False) -> tuple[dict, np.ndarray | None]:
    """(the results.json row, the confusion matrix [K, K + 1] or None) of one system on one test set.

    ``labels`` are the model's classes and ``preds[i]`` is the label extracted from ``records[i]["hyp"]``
    (None: invalid).  An utterance whose reference is not one of ``labels`` (a test set of another corpus,
    or a class the recipe leaves out) is not scored: ``dropped`` counts them per reference label, and the
    table names them.  With ``gold_dists`` (the set's utt2dist) and records that carry "dist" (hyp_dist),
    the row has the distribution scores on the shared labels; without them, ``dist_wanted`` (another row of
    the table has hyp_dist) makes it say why.  ``attrs`` is the set's utt2attr (utt -> {key: level}),
    ``data_rejected`` the lines of its data dir's ``rejected``.
    """
    if len(records) != len(preds):
        raise ValueError(f"{len(records)} records but {len(preds)} extracted labels")
    known = set(labels)
    dropped = Counter(r["label"] for r in records if r.get("label") is not None and r["label"] not in known)
    if dropped:
        pairs = [(r, p) for r, p in zip(records, preds) if r.get("label") is None or r["label"] in known]
        records, preds = [r for r, _ in pairs], [p for _, p in pairs]
    if gold_dists:
        gold_dists = shared_distributions(gold_dists, labels)
    scored = [(r, p) for r, p in zip(records, preds) if r.get("label") is not None]
    refs = [r["label"] for r, _ in scored]
    hyps = [INVALID if p is None else p for _, p in scored]
    n_out, timing = len(records), timing or {}
    row: dict = {"ua": None, "wa": None, "f1": None, "n": len(scored),
                 "rejected": int(data_rejected) + int(timing.get("rejected") or 0), "subsets": {},
                 "sec_per_utt": timing.get("sec_per_utt"),
                 "invalid_rate": sum(p is None for p in preds) / n_out if n_out else None,
                 "mean_words": sum(count_words(r["hyp"]) for r in records) / n_out if n_out else None,
                 "per_class": {}, "labels": list(labels), "quotes": quotation_scores(records)}
    if dropped:
        row["dropped"] = dict(sorted(dropped.items()))
    matrix = None
    if scored:
        scores = classification_scores(refs, hyps, labels)
        row.update({k: scores[k] for k in SUMMARY}, per_class=scores["per_class"])
        for name in sorted({r["subset"] for r, _ in scored if r.get("subset")}):
            members = [i for i, (r, _) in enumerate(scored) if r.get("subset") == name]
            sub = classification_scores([refs[i] for i in members], [hyps[i] for i in members], labels)
            row["subsets"][name] = {k: sub[k] for k in SUMMARY}
        matrix = confusion(refs, hyps, labels)
    target = timing.get("target")
    if target:
        row["well_formed"] = (sum(format_problem(target, r["hyp"], r.get("text")) is None for r in records) / n_out
                              if n_out else None)
        row["n_formatted"] = n_out
        if target == "c2ser_explicit" and attrs is not None:
            row["attr_words"] = attr_word_scores(records, attrs)
    has_dist = bool(records) and all("dist" in r for r in records)
    if gold_dists and has_dist:
        row.update(distribution_row(records, gold_dists, labels, ece_bins))
    if dist_wanted and "js" not in row:
        row["dist_note"] = ("no hyp_dist (decode.dist=true writes the read-out distributions)" if not has_dist
                            else "the test set has no utt2dist" if gold_dists is None
                            else f"none of its {n_out} utterances is in the test set's utt2dist")
    return row, matrix


# --- writing ---------------------------------------------------------------------

def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def _frac(x) -> str:
    return "–" if x is None else f"{x:.4f}"


def _judge_columns(rows: Mapping[str, Mapping]) -> list[tuple[str, str]]:
    """(score key, column name) of the judge's scores: ``empathy[offline]``, the backend named."""
    columns: dict[str, str] = {}
    for row in rows.values():
        judge = row.get("judge", {})
        for k in judge:
            if k not in ("n_judged", "backend") and k not in columns:
                columns[k] = f"{k}[{judge['backend']}]" if judge.get("backend") else k
    return sorted(columns.items())


def _legend(subsets: bool, formatted: bool, attr: bool, dist: bool, judged: list[str], stand_in: bool,
            quoted: bool = False, wer: bool = False) -> str:
    """The line under a table that says what its columns are."""
    parts = ["UA = unweighted average recall, WA = accuracy, F1 = macro-F1, in % of the n utterances with a "
             "reference label" + (" (UA x: of utt2subset's subset x)" if subsets else ""),
             "invalid % = outputs with no extractable label", "words = mean words per output",
             "sec/utt = seconds of generate alone per utterance (GPU synchronised; loading excluded)",
             "rejected = test-set utterances lost in stages 1-2 or in decoding"]
    if wer:
        parts.append("WER % = word error rate of an ASR row (local/eval/asr_metrics.py), which has no UA / WA")
    if formatted:
        parts.append("well-formed % = outputs in the format of the target the prompt was trained on")
    if quoted:
        parts.append("quotes % = outputs that quote a sentence (in double quotes); quotes spoken % = of those, "
                     "the ones whose quote is words of the transcript actually spoken")
    if attr:
        parts.append("pitch / loudness / rate word % = explicit-CoT level words matching utt2attr, over the "
                     "attr n outputs that state all three")
    if dist:
        parts.append("JS (bits) / BC / Brier / ECE / acc dist % = Jensen-Shannon divergence (log 2), "
                     "Bhattacharyya coefficient, per-class Brier score, calibration error and arg-max accuracy "
                     "of the read-out distributions against utt2dist")
    if judged:
        parts.append("rubric[backend] = mean judge score" + (", [offline] a rule stand-in, not a model judge"
                                                                  if stand_in else "")
                     + "; not judged = outputs the judge could not score")
    return "Columns: " + "; ".join(parts) + "."


# Columns a published row can fill: its metric key -> the column's header.
PUBLISHED_COLUMNS = {"ua": "UA", "wa": "WA", "f1": "F1", "js": "JS (bits)", "bc": "BC", "brier": "Brier",
                     "ece": "ECE", "acc": "acc dist %"}


def published_lines(header: Sequence[str], published: Sequence[Mapping]) -> tuple[list[str], list[str]]:
    """(table lines, notes) of the papers' own numbers beside ours: each cell as the paper printed it, the row
    named ``<row> [published]``; under the table, one note per source saying where and on what (their split
    and setup, not ours)."""
    columns = {title: key for key, title in PUBLISHED_COLUMNS.items()}
    lines, sources = [], {}
    for ref in published:
        cells = [f"{ref['row']} [published]"] + [
            str(ref[columns[h]]) if h in columns and ref.get(columns[h]) is not None else "–" for h in header[1:]]
        lines.append("| " + " | ".join(cells) + " |")
        sources.setdefault((ref["source"], ref.get("note")), []).append(ref["row"])
    notes = [f"- [published] {', '.join(rows)}: {source}" + (f"; {note}" if note else "") + "; as printed there."
             for (source, note), rows in sources.items()]
    return lines, notes


def results_markdown(results: Mapping[str, Mapping[str, Mapping]], provenance: Mapping | None = None,
                     published: Mapping[str, Sequence[Mapping]] | None = None) -> str:
    """One table per test set: UA / WA / F1, UA of each subset, invalid %, words, sec/utt, n, rejected; when a
    row has them, well-formed %, the attribute words' accuracy, JS (bits) / BC / Brier / ECE / arg-max
    accuracy % of the read-out distributions, and the judge's mean scores; under it, what the columns are
    and why a row has no distribution scores.  Above it, where the models' training targets came from
    (``provenance``): a stand-in teacher's targets make every row a stand-in's result.  ``published``
    ({set: [row]}) adds the papers' numbers as rows marked [published], with their sources."""
    parts = []
    for test_set, rows in results.items():
        teacher = (((provenance or {}).get("tables") or {}).get(test_set) or {}).get("teacher")
        refs = list((published or {}).get(test_set) or [])
        subsets = sorted({s for row in rows.values() for s in row.get("subsets", {})})
        wer = any("wer" in row for row in rows.values())  # an ASR row (a multi-task system's, local.bin.score)
        dist = any("js" in row for row in [*rows.values(), *refs])
        formatted = any("well_formed" in row for row in rows.values())
        attr = any("attr_words" in row for row in rows.values())
        quoted = any((row.get("quotes") or {}).get("n") for row in rows.values())
        judged = _judge_columns(rows)
        header = ["system", "UA", "WA", "F1", *(f"UA {s}" for s in subsets), "invalid %", "words", "sec/utt", "n",
                  "rejected", *(["WER %"] if wer else []), *(["well-formed %"] if formatted else []),
                  *(["quotes %", "quotes spoken %"] if quoted else []),
                  *([f"{a} word %" for a in ATTR_KEYS] + ["attr n"] if attr else []),
                  *(["JS (bits)", "BC", "Brier", "ECE", "acc dist %"] if dist else []),
                  *(name for _, name in judged), *(["not judged"] if judged else [])]
        note = (provenance or {}).get("note")
        earlier = (((provenance or {}).get("tables") or {}).get(test_set) or {}).get("earlier")
        lines = [f"### {test_set}" + (f" (scored earlier, {earlier}; its decodes unchanged since)" if earlier else ""),
                 "", *([f"**{note}**", ""] if note else []),
                 *([_teacher_line(teacher), ""] if teacher else []),
                 "| " + " | ".join(header) + " |",
                 "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        for name, row in rows.items():
            cells = [name, _pct(row.get("ua")), _pct(row.get("wa")), _pct(row.get("f1")),
                     *(_pct(row.get("subsets", {}).get(s, {}).get("ua")) for s in subsets),
                     _pct(row.get("invalid_rate")),
                     "–" if row["mean_words"] is None else f"{row['mean_words']:.1f}",
                     "–" if row["sec_per_utt"] is None else f"{row['sec_per_utt']:.4g}",
                     str(row["n"]), str(row.get("rejected", "–")), *([_pct(row.get("wer"))] if wer else [])]
            if formatted:
                cells.append(_pct(row.get("well_formed")))
            if quoted:
                quotes = row.get("quotes") or {}
                cells += [_pct(quotes.get("rate")), _pct(quotes.get("spoken"))]
            if attr:
                words = row.get("attr_words", {})
                cells += [*(_pct(words.get(a)) for a in ATTR_KEYS),
                          f"{words['n']}/{words['n_total']}" if words else "–"]
            if dist:
                cells += [*(_frac(row.get(k)) for k in ("js", "bc", "brier", "ece")), _pct(row.get("acc_dist"))]
            cells += ["–" if row.get("judge", {}).get(k) is None else f"{row['judge'][k]:.2f}" for k, _ in judged]
            if judged:
                cells.append(str(row.get("not_judged", "–")))
            lines.append("| " + " | ".join(cells) + " |")
        ref_lines, notes = published_lines(header, refs)
        lines += ref_lines
        stand_in = any(row.get("judge", {}).get("backend") == "offline" for row in rows.values())
        lines += ["", _legend(bool(subsets), formatted, attr, dist, judged, stand_in, quoted, wer)]
        notes += _row_notes(rows, ((provenance or {}).get("tables") or {}).get(test_set, {}).get("rows") or {})
        notes += [f"- {name}: no distribution scores: {row['dist_note']}."
                  for name, row in rows.items() if row.get("dist_note")]
        notes += dropped_notes(rows)
        if notes:
            lines += ["", *notes]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _row_notes(rows: Mapping[str, Mapping], made_of: Mapping[str, Mapping]) -> list[str]:
    """What each row is: the model dir, the prompt (target type) and the judge behind it; a row name alone
    means different things in different systems (``implicit`` is CogAudio's Prompt B)."""
    notes = []
    for name, row in rows.items():
        info = made_of.get(name) or {}
        if name == "attributes":
            notes.append(f"- {name}: a reference classifier (logistic regression on stage 2's attributes alone, "
                         "trained on the train set), not an audio LLM")
            continue
        parts = [f"model `{info['model_dir']}`" if info.get("model_dir") else None,
                 f"prompt of target `{info['target']}`" if info.get("target") else None,
                 f"judge {row['judge']['backend']}" if (row.get("judge") or {}).get("backend") else None]
        if any(parts):
            notes.append(f"- {name}: " + ", ".join(p for p in parts if p))
    return notes


def dropped_notes(rows: Mapping[str, Mapping]) -> list[str]:
    """Which references were left out of rows because the model has no such class: one line per case."""
    cases: dict[tuple, list[str]] = {}
    for name, row in rows.items():
        if row.get("dropped"):
            cases.setdefault((tuple(row["labels"]), tuple(row["dropped"].items())), []).append(name)
    notes = []
    for (labels, dropped), names in cases.items():
        counts = ", ".join(f"{label} ({n})" for label, n in dropped)
        notes.append(f"- {', '.join(names)}: scored on the labels shared with the model ({', '.join(labels)}); "
                     f"not scored, {sum(n for _, n in dropped)} utterances of the labels it does not have: {counts}.")
    return notes


def _teacher_line(teacher: Mapping) -> str:
    backend = teacher.get("backend")
    if backend == "offline":
        return ("Trained on targets of the offline teacher: templates filled from the labels and stage-2 "
                "attributes, a stand-in for an LLM teacher.")
    what = teacher.get("model") or teacher.get("path") or ""
    return f"Trained on targets of the {backend} teacher{f' {what}' if what else ''}."


def confusion_png(matrix: np.ndarray, labels: Sequence[str], title: str) -> bytes:
    """A confusion matrix as PNG bytes: counts, shaded by the share of each reference row."""
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    columns = [*labels, "invalid"]
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(columns), 1.0 + 0.7 * len(labels)))
    try:
        ax.imshow(shares, cmap="Blues", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("hypothesis")
        ax.set_ylabel("reference")
        ax.set_title(title)
        for i in range(matrix.shape[0]):
            for j in range(matrix.shape[1]):
                ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center",
                        color="white" if shares[i, j] > 0.5 else "black", fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
    finally:
        plt.close(fig)
    return buf.getvalue()


def judge_row(scores: Sequence[Mapping[str, float] | None], backend: str | None = None) -> dict:
    """The mean of each score key over the outputs the judge scored (None where it could not), with the
    ``backend`` that scored them: a stand-in's numbers must carry its name."""
    kept = [s for s in scores if s is not None]
    keys = sorted({k for s in kept for k in s})
    row = {"backend": backend} if backend else {}
    return {**row, **{k: float(np.mean([s[k] for s in kept if k in s])) for k in keys}, "n_judged": len(kept)}


def write_results(out_dir: Path | str, results: Mapping[str, Mapping[str, Mapping]],
                  confusions: Mapping[tuple[str, str], np.ndarray], provenance: Mapping | None = None,
                  published: Mapping[str, Sequence[Mapping]] | None = None, extra: Mapping | None = None,
                  appendix: str = "") -> str:
    """Write results.json ({"provenance", "tables"}, plus ``extra``'s keys), results.md (``appendix``, e.g.
    local/eval/task_tables.py's tables, after the per-set ones) and confusion_<set>_<row>.png (each
    atomically); return the markdown.  Plots of tables or rows no longer in ``results`` are removed, so a
    directory never shows a confusion matrix of an earlier run beside this one's table."""
    out_dir = Path(out_dir)
    document = {"provenance": dict(provenance or {}), "tables": results, "published": dict(published or {}),
                **dict(extra or {})}
    write_text_atomic(out_dir / "results.json", json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    markdown = results_markdown(results, provenance, published) + (f"\n{appendix}" if appendix else "")
    write_text_atomic(out_dir / "results.md", markdown)
    earlier = {name for name, t in ((provenance or {}).get("tables") or {}).items() if t.get("earlier")}
    wanted = {f"confusion_{test_set}_{row}.png" for test_set, row in confusions}
    wanted |= {f"confusion_{name}_{row}.png" for name in earlier for row in results.get(name, {})}
    for old in out_dir.glob("confusion_*.png"):
        if old.name not in wanted:
            old.unlink()
    for (test_set, row), matrix in confusions.items():
        write_bytes_atomic(out_dir / f"confusion_{test_set}_{row}.png",
                           confusion_png(matrix, results[test_set][row]["labels"], f"{test_set}: {row}"))
    return markdown
