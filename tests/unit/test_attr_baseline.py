"""The attribute-baseline classifier on test utterances whose attributes could not all be measured."""
from __future__ import annotations

import math

import numpy as np
import pytest

from local.data.attributes import ATTRIBUTES, LEVELS, attribute_stats, bin_attributes
from local.data.kaldi import DataDir, DataDirError, format_kv
from local.eval.attr_baseline import AttributeBaseline

# (f0_hz, f0_range_st, lufs, phones_per_sec) per class: apart in every attribute
MEANS = {"anger": (230, 9, -16, 16), "sadness": (120, 3, -32, 8), "fear": (280, 4, -30, 15),
         "neutral": (170, 6, -24, 11)}


def write_set(path, n_per_class: int, seed: int, stats=None, unmeasured=()) -> dict:
    """A stage-2 dir; ``unmeasured`` keys are set to NaN in every utterance (a test set's unknowns)."""
    rng = np.random.default_rng(seed)
    raw, labels = {}, {}
    for label, means in MEANS.items():
        for i in range(n_per_class):
            utt = f"{label}-{i:03d}"
            raw[utt] = dict(zip(ATTRIBUTES.values(), map(float, np.array(means) * (1 + 0.06 * rng.standard_normal(4)))))
            for key in unmeasured:
                raw[utt][key] = math.nan
            labels[utt] = label
    stats = stats or attribute_stats(raw.values())
    DataDir({"utt2spk": {u: u.split("-")[0] for u in raw}, "utt2emo": labels,
             "utt2attr": {u: format_kv(bin_attributes(v, stats)) for u, v in raw.items()}}).save(path)
    return stats


@pytest.mark.parametrize("features", ["levels", "values", "both"])
def test_unknown_attributes_still_get_a_prediction(tmp_path, features):
    stats = write_set(tmp_path / "train", 30, seed=0)
    write_set(tmp_path / "test", 10, seed=1, stats=stats, unmeasured=("f0_hz", "phones_per_sec"))
    line = DataDir.load(tmp_path / "test")["utt2attr"]["anger-000"]
    assert "pitch=unknown" in line and "rate=unknown" in line and "f0_hz=nan" in line
    baseline = AttributeBaseline(features).fit(tmp_path / "train")
    records, timing = baseline.predict(tmp_path / "test")
    assert timing["n"] == len(records) == 40 and all(r["hyp"] in MEANS for r in records)
    # pitch range and loudness alone still tell these classes apart
    assert np.mean([r["hyp"] == r["label"] for r in records]) > 0.6


def test_unknown_is_no_evidence_either_way(tmp_path):
    stats = write_set(tmp_path / "train", 30, seed=0)
    baseline = AttributeBaseline("both").fit(tmp_path / "train")
    fields = bin_attributes({"f0_hz": math.nan, "f0_range_st": math.nan, "lufs": -24.0, "phones_per_sec": math.nan},
                            stats)
    text = {k: (v if isinstance(v, str) else f"{v:.4g}") for k, v in fields.items()}
    row = baseline._matrix(["u"], [text], tmp_path)[0]
    n = len(LEVELS)
    assert not row[:n].any() and not row[n:2 * n].any() and row[2 * n:3 * n].sum() == 1  # loudness measured
    assert not row[3 * n:4 * n].any()
    values = row[4 * n:]
    assert values[0] == values[1] == values[3] == 0.0  # the train mean, standardised
    assert values[2] == pytest.approx((-24.0 - baseline.scaler.mean_[2]) / baseline.scaler.scale_[2])


def test_a_bad_level_names_the_utterance(tmp_path):
    write_set(tmp_path / "train", 5, seed=0)
    data = DataDir.load(tmp_path / "train")
    data["utt2attr"]["anger-001"] = data["utt2attr"]["anger-001"].replace("pitch=", "pitch=Loud", 1)
    data.save(tmp_path / "train")
    with pytest.raises(DataDirError, match="utterance 'anger-001': pitch=Loud"):
        AttributeBaseline("levels").fit(tmp_path / "train")
