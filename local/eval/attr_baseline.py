"""Baseline: an emotion classifier on the stage-2 attributes alone (pitch, pitch range, loudness, rate).

It asks how far the four numbers that C²SER's explicit CoT reasons from
carry on their own; a reasoning model that does not beat it gains nothing from
the audio beyond them.  Features, from ``utt2attr``:

* ``levels``: the Low / Medium / High bin of each attribute, one-hot;
* ``values``: the raw values (f0_hz, f0_range_st, lufs, phones_per_sec),
  standardised with the train set's mean and standard deviation;
* ``both`` (default): the two side by side.

A silent clip's loudness is -inf (below the BS.1770 gate); it is replaced by
the lowest finite train value, the nearest thing the classifier has seen.
A test set keeps utterances whose attributes could not be measured (stage 2
writes ``unknown`` levels and ``nan`` values): an unknown level is an
all-zero one-hot and a nan value the train mean (0 after standardisation),
i.e. the feature says nothing either way, and the classifier still predicts
from what was measured, so its row covers every test utterance as a decode does.
The classifier is scikit-learn's multinomial logistic regression with
class-balanced weights (UA, the headline metric, weighs every class alike).
Its predictions are written as hypothesis records like a decode's, so stage
10 scores them as one more row; a test utterance without attributes gets an
empty output, i.e. an invalid prediction.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from local.data.attributes import ATTRIBUTES, LEVELS, UNKNOWN
from local.data.kaldi import DataDir, DataDirError, parse_kv

log = logging.getLogger(__name__)

FEATURES = ("levels", "values", "both")


def read_attributes(data: DataDir, path: Path) -> dict[str, dict[str, str]]:
    """utt -> its utt2attr fields; utterances lacking a field are left out with a warning."""
    if "utt2attr" not in data:
        raise DataDirError(path / "utt2attr", None, "is missing; the attribute baseline needs stage 2's attributes")
    needed = [*ATTRIBUTES, *ATTRIBUTES.values()]
    out, incomplete = {}, []
    for utt, value in data["utt2attr"].items():
        try:
            fields = parse_kv(value)
        except ValueError as e:
            raise DataDirError(path / "utt2attr", None, f"utterance '{utt}': {e}") from None
        if all(k in fields for k in needed):
            out[utt] = fields
        else:
            incomplete.append(utt)
    if incomplete:
        log.warning("%s: %d utterances lack attribute fields %s (e.g. %s)", path / "utt2attr",
                    len(incomplete), needed, incomplete[0])
    return out


class AttributeBaseline:
    """Fit on a train data dir, then :meth:`predict` hypothesis records for any data dir."""

    def __init__(self, features: str = "both", C: float = 1.0, seed: int = 0):
        if features not in FEATURES:
            raise ValueError(f"attribute features must be one of {FEATURES}, got '{features}'")
        self.features = features
        self.classifier = LogisticRegression(C=C, class_weight="balanced", max_iter=2000, random_state=seed)
        self.scaler = StandardScaler()
        self.floor: np.ndarray | None = None

    def _matrix(self, utts: list[str], attrs: list[dict[str, str]], path: Path) -> np.ndarray:
        parts = []
        if self.features in ("levels", "both"):
            onehot = np.zeros((len(attrs), len(ATTRIBUTES) * len(LEVELS)))
            for i, (utt, fields) in enumerate(zip(utts, attrs)):
                for j, attr in enumerate(ATTRIBUTES):
                    if fields[attr] == UNKNOWN:
                        continue
                    if fields[attr] not in LEVELS:
                        raise DataDirError(path / "utt2attr", None, f"utterance '{utt}': {attr}={fields[attr]} "
                                           f"is not one of {'/'.join(LEVELS)} or {UNKNOWN}")
                    onehot[i, j * len(LEVELS) + LEVELS.index(fields[attr])] = 1.0
            parts.append(onehot)
        if self.features in ("values", "both"):
            values = np.empty((len(attrs), len(ATTRIBUTES)))
            for i, (utt, fields) in enumerate(zip(utts, attrs)):
                for j, key in enumerate(ATTRIBUTES.values()):
                    try:
                        values[i, j] = float(fields[key])
                    except ValueError:
                        raise DataDirError(path / "utt2attr", None,
                                           f"utterance '{utt}': {key}={fields[key]} is not a number") from None
            unmeasured = np.isnan(values)
            # -inf (silence) -> the floor; NaN stays NaN, which the scaler ignores when fitting
            if self.floor is None:  # fitting: the train set sets the floor and the scaling
                self.floor = np.nanmin(np.where(np.isfinite(values), values, np.nan), axis=0)
                scaled = self.scaler.fit_transform(np.where(np.isinf(values), self.floor, values))
            else:
                scaled = self.scaler.transform(np.where(np.isinf(values), self.floor, values))
            parts.append(np.where(unmeasured, 0.0, scaled))  # 0 after standardising = the train mean
        return np.hstack(parts)

    def fit(self, train_dir: Path | str) -> "AttributeBaseline":
        train_dir = Path(train_dir)
        data = DataDir.load(train_dir)
        if "utt2emo" not in data:
            raise DataDirError(train_dir / "utt2emo", None, "is missing; the attribute baseline trains on labels")
        attrs = read_attributes(data, train_dir)
        utts = [u for u in attrs if u in data["utt2emo"]]
        if len({data["utt2emo"][u] for u in utts}) < 2:
            raise ValueError(f"{train_dir}: the attribute baseline needs at least two labels with attributes")
        self.floor = None
        x = self._matrix(utts, [attrs[u] for u in utts], train_dir)
        self.classifier.fit(x, [data["utt2emo"][u] for u in utts])
        log.info("attribute baseline (%s): trained on %d utterances of %s", self.features, len(utts), train_dir)
        return self

    def predict(self, data_dir: Path | str) -> tuple[list[dict], dict]:
        """(records like a decode's, sorted by utt; timing of the prediction) for every utterance of ``data_dir``."""
        data_dir = Path(data_dir)
        data = DataDir.load(data_dir)
        attrs = read_attributes(data, data_dir)
        utts = data.utts or sorted(data["utt2attr"])  # every utterance, so the row covers what decodes cover
        have = [u for u in utts if u in attrs]
        start = time.perf_counter()
        predicted = self.classifier.predict(self._matrix(have, [attrs[u] for u in have], data_dir)) if have else []
        seconds = time.perf_counter() - start
        label_of = dict(zip(have, predicted))

        def table(name: str, utt: str) -> str | None:
            return (data.get(name) or {}).get(utt)

        records = [{"utt": u, "hyp": str(label_of.get(u, "")), "label": table("utt2emo", u),
                    "pred": label_of.get(u), **({} if u in label_of else {"pred_why": "no stage-2 attributes"}),
                    "subset": table("utt2subset", u), "lang": table("utt2lang", u), "text": table("text", u),
                    "n_tokens": 0} for u in utts]
        timing = {"n": len(utts), "seconds": seconds, "sec_per_utt": seconds / len(utts) if utts else None,
                  "tokens_per_utt": 0}
        return records, timing
