"""Scores of stage 10: classification (UA, WA, macro-F1, per-class accuracy, confusion matrix) and
emotion distributions (JS divergence, Bhattacharyya coefficient, Brier score, ECE, arg-max accuracy).

Classification uses scikit-learn on label strings with an explicit label list, the way SER papers
score (C²SER, EmoBox).  Which classes count:

- UA (unweighted accuracy = macro recall = balanced accuracy) averages recall over the classes that
  occur in the references.  A class the test set never contains has no recall; it is left out, as
  ``balanced_accuracy_score`` does, rather than adding a 0 or a 1 that says nothing about the model.
- Macro-F1 averages over the label-list classes that occur in the references or the hypotheses
  (scikit-learn's default class set): predicting a class the test set lacks costs an F1 of 0.
- A hypothesis outside the label list (no valid label could be read from the output) is simply
  wrong: it lowers the recall of its reference class, WA and F1, and is counted in the last column
  of the confusion matrix, but never becomes a class of its own in the averages.

Distributions are [N, K] arrays or lists of {label: p} dicts read in a fixed label order.  Rows are
checked (finite, non-negative, summing to 1 within 1e-3) and renormalised, so the 4-decimal
rounding of utt2dist is not scored as error.  Logs are base 2: the JS divergence lies in [0, 1].
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from scipy.special import rel_entr
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

INVALID = "<invalid>"  # confusion-matrix column of hypotheses outside the label list


# --- classification ----------------------------------------------------------------------------

def _check_refs(refs: Sequence[str], hyps: Sequence[str], labels: Sequence[str]) -> None:
    if len(refs) != len(hyps) or not refs:
        raise ValueError(f"need as many hypotheses as references, and at least one (got {len(refs)} and {len(hyps)})")
    known = set(labels)
    for i, ref in enumerate(refs):
        if ref not in known:
            raise ValueError(f"reference {i} has label {ref!r}, which is not in the label list {list(labels)}")


def unweighted_accuracy(refs: Sequence[str], hyps: Sequence[str], labels: Sequence[str]) -> float:
    """UA: mean recall over the classes present in the references."""
    _check_refs(refs, hyps, labels)
    present_set = set(refs)
    present = [label for label in labels if label in present_set]
    return float(recall_score(refs, hyps, labels=present, average="macro", zero_division=0))


def weighted_accuracy(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """WA: plain accuracy over utterances."""
    return float(accuracy_score(refs, hyps))


def macro_f1(refs: Sequence[str], hyps: Sequence[str], labels: Sequence[str]) -> float:
    """Macro-F1 over label-list classes seen in references or hypotheses."""
    _check_refs(refs, hyps, labels)
    seen = set(refs) | set(hyps)
    return float(f1_score(refs, hyps, labels=[label for label in labels if label in seen],
                          average="macro", zero_division=0))


def per_class_accuracy(refs: Sequence[str], hyps: Sequence[str], labels: Sequence[str]) -> dict[str, float | None]:
    """Recall of each class; None for a class absent from the references."""
    _check_refs(refs, hyps, labels)
    recalls = recall_score(refs, hyps, labels=list(labels), average=None, zero_division=0)
    present = set(refs)
    return {label: (float(r) if label in present else None) for label, r in zip(labels, recalls)}


def confusion(refs: Sequence[str], hyps: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Counts [K, K + 1]: rows are references, columns hypotheses in label order, then INVALID."""
    _check_refs(refs, hyps, labels)
    known = set(labels)
    mapped = [h if h in known else INVALID for h in hyps]
    return confusion_matrix(refs, mapped, labels=[*labels, INVALID])[: len(labels)]


def classification_scores(refs: Sequence[str], hyps: Sequence[str], labels: Sequence[str]) -> dict:
    """The row of a results table: ua, wa, f1, n, per-class accuracy and the invalid-output rate."""
    known = set(labels)
    return {"ua": unweighted_accuracy(refs, hyps, labels),
            "wa": weighted_accuracy(refs, hyps),
            "f1": macro_f1(refs, hyps, labels),
            "n": len(refs),
            "per_class": per_class_accuracy(refs, hyps, labels),
            "invalid_rate": sum(h not in known for h in hyps) / len(hyps)}


# --- distributions -----------------------------------------------------------------------------

def as_distributions(dists: np.ndarray | Sequence[Mapping[str, float]],
                     labels: Sequence[str] | None = None) -> np.ndarray:
    """[N, K] float64 rows that are probability distributions, from an array or {label: p} dicts."""
    if len(dists) and isinstance(dists[0], Mapping):
        if labels is None:
            raise ValueError("distributions given as dicts need the label list that orders them")
        index = {label: k for k, label in enumerate(labels)}
        rows = np.zeros((len(dists), len(labels)))
        for i, dist in enumerate(dists):
            for label, p in dist.items():
                if label not in index:
                    raise ValueError(f"distribution {i} has label {label!r}, which is not in {list(labels)}")
                rows[i, index[label]] = p
    else:
        rows = np.atleast_2d(np.asarray(dists, dtype=np.float64))
    if rows.ndim != 2 or 0 in rows.shape:
        raise ValueError(f"expected [N, K] distributions, got shape {rows.shape}")
    sums = rows.sum(axis=1)
    bad = ~np.isfinite(rows).all(axis=1) | (rows < 0).any(axis=1) | (np.abs(sums - 1) > 1e-3)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"distribution {i} is not a probability distribution: {rows[i].tolist()}")
    return rows / sums[:, None]


def _pair(pred, gold, labels) -> tuple[np.ndarray, np.ndarray]:
    p, q = as_distributions(pred, labels), as_distributions(gold, labels)
    if p.shape != q.shape:
        raise ValueError(f"predicted {p.shape} and gold {q.shape} distributions differ in shape")
    return p, q


def js_divergence(pred, gold, labels: Sequence[str] | None = None) -> np.ndarray:
    """Jensen–Shannon divergence per row, base 2, in [0, 1] (the square of scipy's distance)."""
    p, q = _pair(pred, gold, labels)
    m = (p + q) / 2
    return (rel_entr(p, m).sum(axis=1) + rel_entr(q, m).sum(axis=1)) / (2 * np.log(2))


def bhattacharyya(pred, gold, labels: Sequence[str] | None = None) -> np.ndarray:
    """Bhattacharyya coefficient Σ_k √(p_k q_k) per row: 1 for identical distributions, 0 for disjoint."""
    p, q = _pair(pred, gold, labels)
    return np.sqrt(p * q).sum(axis=1)


def brier_score(pred, gold, labels: Sequence[str] | None = None) -> float:
    """Mean over utterances and classes of (p_k − q_k)², i.e. Σ_k (p_k − q_k)² / K averaged.

    Divided by K because the ambiguity paper's Table 2 (0.07–0.15 with 4 IEMOCAP classes,
    0.03–0.05 with 6 CREMA-D classes, next to BC 0.64–0.86) is only consistent with the per-class
    mean; the classic multi-class Brier score (sum over classes) is K times this value.
    """
    p, q = _pair(pred, gold, labels)
    return float(((p - q) ** 2).mean())


def _argmax_correct(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """The predicted arg-max is right when it is one of the gold arg-max classes (ties in votes)."""
    picked = p.argmax(axis=1)
    return q[np.arange(len(q)), picked] >= q.max(axis=1) - 1e-9


def argmax_accuracy(pred, gold, labels: Sequence[str] | None = None) -> float:
    """Share of utterances whose most probable predicted class is a most-voted gold class."""
    p, q = _pair(pred, gold, labels)
    return float(_argmax_correct(p, q).mean())


def expected_calibration_error(pred, gold, labels: Sequence[str] | None = None, n_bins: int = 15) -> float:
    """ECE (Guo et al. 2017): Σ_b |B_b|/N · |accuracy(B_b) − confidence(B_b)|.

    Confidence is the predicted maximum probability, put in equal-width bins (i/n, (i+1)/n];
    accuracy is arg-max correctness against the gold distribution (see argmax_accuracy).
    """
    p, q = _pair(pred, gold, labels)
    confidence = p.max(axis=1)
    correct = _argmax_correct(p, q)
    bins = np.digitize(confidence, np.linspace(0, 1, n_bins + 1)[1:-1], right=True)
    ece = 0.0
    for b in np.unique(bins):
        members = bins == b
        ece += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(ece)


def distribution_scores(pred, gold, labels: Sequence[str] | None = None, n_bins: int = 15) -> dict:
    """The row of a distribution table (ambiguity paper Table 2): means over utterances."""
    p, q = _pair(pred, gold, labels)
    return {"js": float(js_divergence(p, q).mean()),
            "bc": float(bhattacharyya(p, q).mean()),
            "brier": brier_score(p, q),
            "ece": expected_calibration_error(p, q, n_bins=n_bins),
            "acc": argmax_accuracy(p, q),
            "n": len(p)}
