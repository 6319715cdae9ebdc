"""Paired bootstrap over utterances: is system B's difference from system A more than the test set's noise?

Two decodes of one test set are scored on the same utterances, so their
difference is resampled in pairs (Koehn 2004; Efron & Tibshirani 1993): each
resample draws N utterance indices with replacement, the statistic is
recomputed for A and for B on the same draw, and the spread of B − A over
the resamples is the uncertainty the test set leaves.  The interval is the
percentile interval; ``p_b_greater`` is the share of resamples where B's
statistic exceeds A's (for UA B better, for JS B worse).

UA is recomputed on each resample from per-class hit counts (numpy, a few
microseconds, where scikit-learn takes milliseconds and 2000 resamples of
two systems would take half a minute); on all utterances it is checked to
equal :func:`local.eval.metrics.unweighted_accuracy`, stage 10's definition
(mean recall over the classes present, an output with no label wrong).
The JS statistic is the mean of :func:`local.eval.metrics.js_divergence`
per utterance (log base 2), as stage 10's ``js``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from local.data.kaldi import parse_dist, read_table
from local.data.labels import EMOTIONS
from local.eval.decode import read_decode_dir
from local.eval.extract import extract_labels
from local.eval.metrics import INVALID, js_divergence, unweighted_accuracy
from local.eval.report import shared_distributions


@dataclass(frozen=True)
class Bootstrap:
    a: float                  # the statistic of A on all utterances
    b: float
    diff: float               # b - a: the point estimate
    low: float                # percentile interval of b - a over the resamples
    high: float
    p_b_greater: float        # share of resamples with b > a
    n: int                    # utterances
    resamples: int
    ci: float
    diffs: np.ndarray = field(repr=False, compare=False)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("a", "b", "diff", "low", "high", "p_b_greater", "n", "resamples", "ci")}


def paired_bootstrap(values_a: Sequence | np.ndarray, values_b: Sequence | np.ndarray,
                     stat: Callable[[np.ndarray], float] = np.mean, resamples: int = 2000, seed: int = 0,
                     ci: float = 0.95) -> Bootstrap:
    """The paired bootstrap of ``stat(B) - stat(A)``.

    ``values_a[i]`` and ``values_b[i]`` are what the two systems got on utterance i (any array whose first
    axis is the utterance); ``stat`` maps the rows of one resample to a number.  Resample r draws its
    indices from ``numpy.random.default_rng(seed)`` in order, so a seed gives the same draws for any stat.
    """
    a, b = np.asarray(values_a), np.asarray(values_b)
    if len(a) != len(b) or not len(a):
        raise ValueError(f"a paired bootstrap needs as many values of A as of B, and at least one "
                         f"(got {len(a)} and {len(b)})")
    if resamples < 1 or not 0 < ci < 1:
        raise ValueError(f"need resamples >= 1 and 0 < ci < 1 (got {resamples} and {ci})")
    n = len(a)
    rng = np.random.default_rng(seed)
    diffs = np.empty(resamples)
    for r in range(resamples):
        idx = rng.integers(0, n, size=n)
        diffs[r] = float(stat(b[idx])) - float(stat(a[idx]))
    low, high = np.percentile(diffs, [50 * (1 - ci), 50 * (1 + ci)])
    stat_a, stat_b = float(stat(a)), float(stat(b))
    return Bootstrap(a=stat_a, b=stat_b, diff=stat_b - stat_a, low=float(low), high=float(high),
                     p_b_greater=float(np.mean(diffs > 0)), n=n, resamples=resamples, ci=ci, diffs=diffs)


def ua_values(refs: Sequence[str], hyps: Sequence[str | None], labels: Sequence[str] = EMOTIONS) -> np.ndarray:
    """[N, 2] ints per utterance: the reference's class index, and 1 when the hypothesis is it (None: wrong)."""
    index = {label: k for k, label in enumerate(labels)}
    unknown = sorted({r for r in refs if r not in index})
    if unknown:
        raise ValueError(f"reference label(s) {unknown} are not in the label list {list(labels)}")
    return np.array([[index[r], int(h == r)] for r, h in zip(refs, hyps)], dtype=np.int64).reshape(-1, 2)


def ua_stat(values: np.ndarray, n_classes: int = len(EMOTIONS)) -> float:
    """UA of :func:`ua_values` rows: mean recall over the classes present in them."""
    counts = np.bincount(values[:, 0], minlength=n_classes)
    hits = np.bincount(values[:, 0], weights=values[:, 1], minlength=n_classes)
    present = counts > 0
    return float((hits[present] / counts[present]).mean())


# --- two decode dirs ------------------------------------------------------------------------

def _read_gold(data_dir: Path) -> dict[str, dict[str, float]]:
    gold = {}
    for utt, value in read_table(data_dir / "utt2dist").items():
        try:
            gold[utt] = parse_dist(value)
        except ValueError as e:
            raise ValueError(f"{data_dir / 'utt2dist'}: '{utt}': {e}") from None
    return gold


def compare_decodes(dir_a: Path | str, dir_b: Path | str, resamples: int = 2000, seed: int = 0,
                    ci: float = 0.95) -> dict:
    """The paired bootstrap of UA and, where both have ``hyp_dist`` and the set has ``utt2dist``, of mean JS,
    between two decode dirs of one test set; a statistic that cannot be compared is None with a note why."""
    dir_a, dir_b = Path(dir_a), Path(dir_b)
    (records_a, timing_a), (records_b, timing_b) = read_decode_dir(dir_a), read_decode_dir(dir_b)
    set_a, set_b = timing_a.get("set"), timing_b.get("set")
    if set_a and set_b and set_a != set_b:
        raise ValueError(f"{dir_a} decodes test set '{set_a}' and {dir_b} test set '{set_b}': "
                         "a paired comparison needs one test set")
    by_a, by_b = {r["utt"]: r for r in records_a}, {r["utt"]: r for r in records_b}
    if set(by_a) != set(by_b):
        only_a, only_b = sorted(set(by_a) - set(by_b)), sorted(set(by_b) - set(by_a))
        raise ValueError(f"{dir_a} and {dir_b} decode different utterances: {len(only_a)} only in the first "
                         f"{only_a[:3]}, {len(only_b)} only in the second {only_b[:3]}")
    utts = sorted(by_a)
    differ = [u for u in utts if by_a[u].get("label") != by_b[u].get("label")]
    if differ:
        raise ValueError(f"{dir_a} and {dir_b} give utterance '{differ[0]}' different reference labels "
                         f"({by_a[differ[0]].get('label')!r} vs {by_b[differ[0]].get('label')!r})")
    result: dict = {"a": str(dir_a), "b": str(dir_b), "set": set_a or set_b, "resamples": resamples,
                    "seed": seed, "ci": ci, "n_utts": len(utts), "ua": None, "js": None, "notes": []}

    labels = timing_a.get("labels") or list(EMOTIONS)  # the models' classes, as stage 10 scores them
    if (timing_b.get("labels") or list(EMOTIONS)) != labels:
        raise ValueError(f"{dir_a} answers in {labels} and {dir_b} in {timing_b.get('labels') or list(EMOTIONS)}: "
                         "a paired comparison needs models of one label set")
    labelled = [u for u in utts if by_a[u].get("label") is not None]
    outside = sorted({by_a[u]["label"] for u in labelled} - set(labels))
    if outside:
        labelled = [u for u in labelled if by_a[u]["label"] in labels]
        result["notes"].append(f"UA: references {outside} are not classes of the models: not compared")
    if labelled:
        refs = [by_a[u]["label"] for u in labelled]
        values = []
        for by in (by_a, by_b):
            hyps = extract_labels([by[u]["hyp"] for u in labelled], "rules", labels=labels)
            expected = unweighted_accuracy(refs, [INVALID if h is None else h for h in hyps], labels)
            rows = ua_values(refs, hyps, labels)
            if not np.isclose(ua_stat(rows), expected, rtol=0, atol=1e-12):
                raise AssertionError(f"bootstrap UA {ua_stat(rows)} differs from stage 10's {expected}")
            values.append(rows)
        result["ua"] = paired_bootstrap(*values, stat=ua_stat, resamples=resamples, seed=seed, ci=ci).as_dict()
    else:
        result["notes"].append("UA: no utterance has a reference label")

    reason = js_unavailable(dir_a, dir_b, records_a, records_b, timing_a, timing_b)
    if reason is None:
        data_dir = Path(timing_a.get("data_dir") or timing_b.get("data_dir"))
        gold = shared_distributions(_read_gold(data_dir), labels)
        shared = [u for u in utts if u in gold]
        if shared:
            js = [js_divergence([by[u]["dist"] for u in shared], [gold[u] for u in shared], labels)
                  for by in (by_a, by_b)]
            result["js"] = paired_bootstrap(*js, stat=np.mean, resamples=resamples, seed=seed, ci=ci).as_dict()
        else:
            reason = f"no decoded utterance is in {data_dir / 'utt2dist'}"
    if reason is not None:
        result["notes"].append(f"JS: {reason}")
    return result


def js_unavailable(dir_a: Path, dir_b: Path, records_a: Sequence[Mapping], records_b: Sequence[Mapping],
                   timing_a: Mapping, timing_b: Mapping) -> str | None:
    """Why the JS divergences of two decodes cannot be compared, or None."""
    lacking = [str(d) for d, records in ((dir_a, records_a), (dir_b, records_b))
               if not records or "dist" not in records[0]]
    if lacking:
        return f"no hyp_dist in {' and '.join(lacking)} (decode.dist=true writes it)"
    data_dir = timing_a.get("data_dir") or timing_b.get("data_dir")
    if not data_dir:
        return "neither timing.json names the test set's data_dir, where utt2dist is"
    if not (Path(data_dir) / "utt2dist").is_file():
        return f"the test set has no utt2dist ({Path(data_dir) / 'utt2dist'})"
    return None


def comparison_markdown(result: Mapping) -> str:
    """A small table: each statistic of A and B, B − A, its interval and P(B > A), then the notes."""
    pct = 100 * result["ci"]
    lines = [f"A = {result['a']}", f"B = {result['b']}", "",
             f"| metric | A | B | B − A | {pct:g} % interval | P(B > A) | n |", "|---|---:|---:|---:|---:|---:|---:|"]
    for key, name, scale, fmt in (("ua", "UA %", 100, ".2f"), ("js", "JS (bits)", 1, ".4f")):
        s = result.get(key)
        if s is None:
            continue
        lines.append(f"| {name} | {scale * s['a']:{fmt}} | {scale * s['b']:{fmt}} | {scale * s['diff']:+{fmt}} | "
                     f"[{scale * s['low']:{fmt}}, {scale * s['high']:{fmt}}] | {s['p_b_greater']:.4f} | {s['n']} |")
    lines += ["", f"Paired bootstrap over utterances, {result['resamples']} resamples (seed {result['seed']}), "
                  "percentile interval; UA = unweighted average recall (higher is better), JS = mean "
                  "Jensen-Shannon divergence to utt2dist in bits (lower is better)."]
    lines += [f"Not compared: {note}" for note in result["notes"]]
    return "\n".join(lines) + "\n"
