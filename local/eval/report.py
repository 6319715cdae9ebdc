"""Stage 10: results tables, from hypotheses whose labels have been extracted.

``results.json`` is the machine-readable form every claim is checked against::

    {"<test_set>": {"<row>": {"ua", "wa", "f1", "n",
                              "subsets": {"<subset>": {"ua", "wa", "f1", "n"}, ...},
                              "sec_per_utt", "invalid_rate", "mean_words", "per_class"}}}

A row is one system or baseline on one test set (``implicit``, ``explicit``,
``text_only``, ``attributes`` ...).  UA / WA / F1 / per-class accuracy come
from :mod:`local.eval.metrics` over the utterances that have a reference
label (``n`` of them; None and n 0 for an unlabelled set), an output with no
extractable label counting as wrong; subsets are the values of ``utt2subset``.
``invalid_rate`` (outputs with no label) and ``mean_words`` (output length:
whitespace-separated words, each CJK character one word) are over every
output, labelled or not.  ``sec_per_utt`` is the decode time from timing.json.

A row whose decode dir has ``hyp_dist`` (read-out distributions), on a test
set with ``utt2dist``, also has the ambiguity paper's Table 2 scores of
:func:`local.eval.metrics.distribution_scores` over the utterances that have
both: ``js`` (Jensen–Shannon divergence, log base 2, in [0, 1]), ``bc``
(Bhattacharyya coefficient), ``brier`` (per-class mean), ``ece`` (``score.ece_bins`` bins),
``acc_dist`` (the arg-max is a most-voted class) and ``n_dist``.

With ``score.judge_rubrics`` a row also has ``judge``: the mean raw score of each rubric key over the
outputs the judge scored (e.g. ``{"empathy": 2.4, "n_judged": 284}``, empathy on CogAudio's 1-4 scale).

``results.md`` has one table per test set (percentages; the distribution
scores, when a row has them, as fractions with acc % last), and
``confusion_<set>_<row>.png`` one confusion matrix per labelled row.
"""
from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import numpy as np

from local.eval.metrics import INVALID, classification_scores, confusion, distribution_scores
from local.utils.atomic import write_bytes_atomic, write_text_atomic

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

_WORDS = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\s\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
SUMMARY = ("ua", "wa", "f1", "n")
DIST_KEYS = {"js": "js", "bc": "bc", "brier": "brier", "ece": "ece", "acc": "acc_dist", "n": "n_dist"}


def count_words(text: str) -> int:
    """Words of an output: whitespace-separated runs, and every CJK character on its own."""
    return len(_WORDS.findall(text))


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


def score_row(records: Sequence[Mapping], preds: Sequence[str | None], labels: Sequence[str],
              timing: Mapping | None = None, gold_dists: Mapping[str, Mapping[str, float]] | None = None,
              ece_bins: int = 15) -> tuple[dict, np.ndarray | None]:
    """(the results.json row, the confusion matrix [K, K + 1] or None) of one system on one test set.

    ``preds[i]`` is the label extracted from ``records[i]["hyp"]`` (None: invalid).  With ``gold_dists``
    (the set's utt2dist) and records that carry "dist" (hyp_dist), the row has the distribution scores.
    """
    if len(records) != len(preds):
        raise ValueError(f"{len(records)} records but {len(preds)} extracted labels")
    scored = [(r, p) for r, p in zip(records, preds) if r.get("label") is not None]
    refs = [r["label"] for r, _ in scored]
    hyps = [INVALID if p is None else p for _, p in scored]
    n_out = len(records)
    row: dict = {"ua": None, "wa": None, "f1": None, "n": len(scored), "subsets": {},
                 "sec_per_utt": (timing or {}).get("sec_per_utt"),
                 "invalid_rate": sum(p is None for p in preds) / n_out if n_out else None,
                 "mean_words": sum(count_words(r["hyp"]) for r in records) / n_out if n_out else None,
                 "per_class": {}}
    matrix = None
    if scored:
        scores = classification_scores(refs, hyps, labels)
        row.update({k: scores[k] for k in SUMMARY}, per_class=scores["per_class"])
        for name in sorted({r["subset"] for r, _ in scored if r.get("subset")}):
            members = [i for i, (r, _) in enumerate(scored) if r.get("subset") == name]
            sub = classification_scores([refs[i] for i in members], [hyps[i] for i in members], labels)
            row["subsets"][name] = {k: sub[k] for k in SUMMARY}
        matrix = confusion(refs, hyps, labels)
    if gold_dists and records and all("dist" in r for r in records):
        row.update(distribution_row(records, gold_dists, labels, ece_bins))
    return row, matrix


# --- writing ---------------------------------------------------------------------

def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def _frac(x) -> str:
    return "–" if x is None else f"{x:.4f}"


def results_markdown(results: Mapping[str, Mapping[str, Mapping]]) -> str:
    """One table per test set: UA / WA / F1, UA of each subset, invalid %, words, sec/utt, n; then, when a
    row has them, JS (bits) / BC / Brier / ECE / arg-max accuracy % of the read-out distributions, and the
    judge's mean scores."""
    parts = []
    for test_set, rows in results.items():
        subsets = sorted({s for row in rows.values() for s in row["subsets"]})
        dist = any("js" in row for row in rows.values())
        judged = sorted({k for row in rows.values() for k in row.get("judge", {}) if k != "n_judged"})
        header = ["system", "UA", "WA", "F1", *(f"UA {s}" for s in subsets), "invalid %", "words", "sec/utt", "n",
                  *(["JS (bits)", "BC", "Brier", "ECE", "acc dist %"] if dist else []), *judged]
        lines = [f"### {test_set}", "", "| " + " | ".join(header) + " |",
                 "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        for name, row in rows.items():
            cells = [name, _pct(row["ua"]), _pct(row["wa"]), _pct(row["f1"]),
                     *(_pct(row["subsets"].get(s, {}).get("ua")) for s in subsets),
                     _pct(row["invalid_rate"]),
                     "–" if row["mean_words"] is None else f"{row['mean_words']:.1f}",
                     "–" if row["sec_per_utt"] is None else f"{row['sec_per_utt']:.4g}",
                     str(row["n"])]
            if dist:
                cells += [*(_frac(row.get(k)) for k in ("js", "bc", "brier", "ece")), _pct(row.get("acc_dist"))]
            cells += ["–" if row.get("judge", {}).get(k) is None else f"{row['judge'][k]:.2f}" for k in judged]
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


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


def judge_row(scores: Sequence[Mapping[str, float] | None]) -> dict:
    """The mean of each score key over the outputs the judge scored (None where it could not)."""
    kept = [s for s in scores if s is not None]
    keys = sorted({k for s in kept for k in s})
    return {**{k: float(np.mean([s[k] for s in kept if k in s])) for k in keys}, "n_judged": len(kept)}


def write_results(out_dir: Path | str, results: Mapping[str, Mapping[str, Mapping]],
                  confusions: Mapping[tuple[str, str], np.ndarray], labels: Sequence[str]) -> str:
    """Write results.json, results.md and confusion_<set>_<row>.png (each atomically); return the markdown."""
    out_dir = Path(out_dir)
    write_text_atomic(out_dir / "results.json", json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    markdown = results_markdown(results)
    write_text_atomic(out_dir / "results.md", markdown)
    for (test_set, row), matrix in confusions.items():
        write_bytes_atomic(out_dir / f"confusion_{test_set}_{row}.png",
                           confusion_png(matrix, labels, f"{test_set}: {row}"))
    return markdown
