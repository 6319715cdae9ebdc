"""The paired bootstrap between two decodes (local/eval/bootstrap.py, local/bin/compare.py), checked against
the statistics computed directly with local.eval.metrics on decode dirs written by hand."""
from __future__ import annotations

import json

import numpy as np
import pytest

from local.bin.compare import main as compare_main
from local.data.kaldi import DataDir
from local.data.labels import EMOTIONS
from local.eval.bootstrap import compare_decodes, paired_bootstrap, ua_stat, ua_values
from local.eval.decode import write_decode_dir
from local.eval.extract import extract_label, extract_labels
from local.eval.metrics import INVALID, js_divergence, unweighted_accuracy
from local.eval.report import distribution_row

PER_CLASS = 10  # a class-balanced set: 70 utterances


def balanced_utts():
    """(utt, label), sorted by utt as decode dirs are, class by class."""
    return [(f"spk0-{k:02d}{i:02d}", label) for k, label in enumerate(EMOTIONS) for i in range(PER_CLASS)]


def outputs(utts, right: set[str]):
    """The decoded text of each utterance: its label where ``right``, else another label or nothing."""
    wrong = {label: EMOTIONS[(k + 1) % len(EMOTIONS)] for k, label in enumerate(EMOTIONS)}
    return [f"The emotion was inferred to be {label}." if utt in right
            else ("I cannot tell." if i % 3 == 0 else f"The emotion is {wrong[label]}.")
            for i, (utt, label) in enumerate(utts)]


def write(decode_dir, utts, hyps, set_name="test", dists=None, data_dir=None):
    records = [{"utt": u, "hyp": h, "label": label, "text": "x"} for (u, label), h in zip(utts, hyps)]
    if dists is not None:
        for r, d in zip(records, dists):
            r["dist"] = d
    timing = {"n": len(records), "set": set_name, "mode": "implicit"}
    if data_dir is not None:
        timing["data_dir"] = str(data_dir)
    write_decode_dir(decode_dir, records, timing)
    return decode_dir


def direct_ua(utts, hyps):
    return unweighted_accuracy([label for _, label in utts],
                               [extract_label(h) or INVALID for h in hyps], EMOTIONS)


def test_identical_decodes_give_zero_and_the_interval_zero(tmp_path):
    utts = balanced_utts()
    hyps = outputs(utts, {u for i, (u, _) in enumerate(utts) if i % 2})
    a = write(tmp_path / "a", utts, hyps)
    b = write(tmp_path / "b", utts, hyps)
    result = compare_decodes(a, b, resamples=300, seed=1)
    ua = result["ua"]
    assert ua["a"] == ua["b"] == pytest.approx(direct_ua(utts, hyps))
    assert (ua["diff"], ua["low"], ua["high"], ua["p_b_greater"]) == (0.0, 0.0, 0.0, 0.0)
    assert ua["n"] == len(utts) and result["js"] is None
    assert result["notes"] == [f"JS: no hyp_dist in {a} and {b} (decode.dist=true writes it)"]


def test_a_known_shift_in_ua_is_the_point_estimate_and_inside_a_narrow_interval(tmp_path):
    utts = balanced_utts()
    right_a = {u for i, (u, _) in enumerate(utts) if i % PER_CLASS < 5}
    extra = {u for i, (u, _) in enumerate(utts) if i % PER_CLASS in (5, 6) and i < 3 * PER_CLASS}  # k = 6
    hyps_a, hyps_b = outputs(utts, right_a), outputs(utts, right_a | extra)
    want = direct_ua(utts, hyps_b) - direct_ua(utts, hyps_a)
    assert want == pytest.approx(3 * (2 / PER_CLASS) / len(EMOTIONS))  # 2 more right in 3 of 7 classes

    result = compare_decodes(write(tmp_path / "a", utts, hyps_a), write(tmp_path / "b", utts, hyps_b),
                             resamples=1000, seed=0)
    ua = result["ua"]
    assert ua["diff"] == pytest.approx(want, abs=1e-12)
    assert ua["low"] <= want <= ua["high"] and ua["low"] >= 0  # B is right wherever A is
    assert 0.9 < ua["p_b_greater"] <= 1

    refs = [label for _, label in utts]
    values = [ua_values(refs, extract_labels(h)) for h in (hyps_a, hyps_b)]
    boot = paired_bootstrap(*values, stat=ua_stat, resamples=1000, seed=0)
    assert boot.as_dict() == ua
    assert ua["high"] - ua["low"] < boot.diffs.max() - boot.diffs.min()
    # each resample's UA is stage 10's UA of the drawn utterances (same draws: default_rng(seed), in order)
    rng = np.random.default_rng(0)
    for r in range(5):
        idx = rng.integers(0, len(utts), size=len(utts))
        got = [unweighted_accuracy([refs[i] for i in idx], [extract_label(h[i]) or INVALID for i in idx], EMOTIONS)
               for h in (hyps_a, hyps_b)]
        assert boot.diffs[r] == pytest.approx(got[1] - got[0], abs=1e-12)


def test_ua_stat_is_stage_10s_ua_with_invalid_outputs_and_absent_classes():
    rng = np.random.default_rng(3)
    refs = [EMOTIONS[k] for k in rng.integers(0, 4, 50)]  # three classes never occur
    hyps = [None if k == 7 else EMOTIONS[k] for k in rng.integers(0, 8, 50)]
    assert ua_stat(ua_values(refs, hyps)) == pytest.approx(
        unweighted_accuracy(refs, [h or INVALID for h in hyps], EMOTIONS), abs=1e-12)
    with pytest.raises(ValueError, match="not in the label list"):
        ua_values(["joy"], ["joy"])


def test_a_constant_js_shift_gives_an_interval_around_it():
    js_a = np.random.default_rng(0).uniform(0.1, 0.6, 200)
    boot = paired_bootstrap(js_a, js_a + 0.05, resamples=500, seed=2)
    assert boot.diff == pytest.approx(0.05) and boot.p_b_greater == 1
    assert boot.low == pytest.approx(0.05, abs=1e-12) and boot.high == pytest.approx(0.05, abs=1e-12)
    worse = paired_bootstrap(js_a, js_a + np.random.default_rng(1).normal(0.05, 0.02, 200), resamples=500)
    assert worse.low < worse.diff < worse.high and worse.low < 0.05 < worse.high
    with pytest.raises(ValueError, match="as many values"):
        paired_bootstrap([1, 2], [1])


def test_js_of_two_decodes_is_stage_10s(tmp_path):
    utts = balanced_utts()[:12]
    data = tmp_path / "data" / "test"
    gold = {u: {label: 0.75, "neutral" if label != "neutral" else "fear": 0.25} for u, label in utts}
    DataDir({"utt2dist": {u: " ".join(f"{k}:{p:.4f}" for k, p in d.items()) for u, d in gold.items()},
             "utt2spk": {u: u.split("-")[0] for u, _ in utts}}).save(data)
    rng = np.random.default_rng(0)
    dists = [[dict(zip(EMOTIONS, rng.dirichlet(np.ones(len(EMOTIONS))))) for _ in utts] for _ in range(2)]
    hyps = outputs(utts, set())
    a = write(tmp_path / "a", utts, hyps, dists=dists[0], data_dir=data)
    b = write(tmp_path / "b", utts, hyps, dists=dists[1])
    result = compare_decodes(a, b, resamples=200)
    js = [js_divergence(d, [gold[u] for u, _ in utts], EMOTIONS) for d in dists]
    assert result["js"]["diff"] == pytest.approx(js[1].mean() - js[0].mean(), abs=1e-6)
    records = [{"utt": u, "dist": d} for (u, _), d in zip(utts, dists[0])]
    assert result["js"]["a"] == pytest.approx(distribution_row(records, gold, EMOTIONS)["js"], abs=1e-6)
    assert result["js"]["n"] == len(utts) and result["notes"] == []
    assert result["js"]["low"] <= result["js"]["diff"] <= result["js"]["high"]


def test_different_utterances_or_sets_are_an_error_naming_both_dirs(tmp_path):
    utts = balanced_utts()
    hyps = outputs(utts, set())
    a = write(tmp_path / "a", utts, hyps)
    b = write(tmp_path / "b", utts[1:], hyps[1:])
    with pytest.raises(ValueError, match=rf"{a} and {b} decode different utterances: 1 only in the first"):
        compare_decodes(a, b)
    c = write(tmp_path / "c", utts, hyps, set_name="dev")
    with pytest.raises(ValueError, match=rf"{a} decodes test set 'test' and {c} test set 'dev'"):
        compare_decodes(a, c)


def test_cli_end_to_end(tmp_path, capsys):
    utts = balanced_utts()
    right = {u for i, (u, _) in enumerate(utts) if i % 2}
    a = write(tmp_path / "exp" / "decode_test_implicit", utts, outputs(utts, right))
    b = write(tmp_path / "exp" / "decode_test_explicit", utts, outputs(utts, right | {utts[0][0], utts[20][0]}))
    out = tmp_path / "cmp" / "ua.json"
    result = compare_main([str(a), str(b), "--resamples", "200", "--seed", "3", "--ci", "0.9", "--json", str(out)])
    printed = capsys.readouterr().out
    assert json.loads(out.read_text()) == result
    assert (result["set"], result["resamples"], result["seed"], result["ci"]) == ("test", 200, 3, 0.9)
    ua = result["ua"]
    assert "| metric | A | B | B − A | 90 % interval | P(B > A) | n |" in printed
    assert (f"| UA % | {100 * ua['a']:.2f} | {100 * ua['b']:.2f} | {100 * ua['diff']:+.2f} | "
            f"[{100 * ua['low']:.2f}, {100 * ua['high']:.2f}] | {ua['p_b_greater']:.4f} | 70 |") in printed
    assert f"A = {a}" in printed and "Not compared: JS: no hyp_dist" in printed
