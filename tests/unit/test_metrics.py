"""Stage 10 metrics against scikit-learn, scipy and hand-computed values."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from local.data.labels import EMOTIONS
from local.eval.metrics import (INVALID, argmax_accuracy, as_distributions, bhattacharyya, brier_score,
                                classification_scores, confusion, distribution_scores, expected_calibration_error,
                                js_divergence, macro_f1, per_class_accuracy, unweighted_accuracy, weighted_accuracy)

LABELS = list(EMOTIONS)


def random_labels(seed: int, n: int = 200):
    """References over six of the seven classes ("fear" never occurs); hypotheses may predict it."""
    rng = np.random.default_rng(seed)
    refs = list(rng.choice(LABELS[:6], size=n))
    hyps = [r if rng.random() < 0.5 else str(rng.choice(LABELS)) for r in refs]
    return refs, hyps


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")  # the predicted absent class
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_scores_equal_scikit_learn(seed):
    refs, hyps = random_labels(seed)
    assert "fear" in hyps and "fear" not in refs
    assert unweighted_accuracy(refs, hyps, LABELS) == pytest.approx(balanced_accuracy_score(refs, hyps), abs=1e-12)
    assert weighted_accuracy(refs, hyps) == pytest.approx(accuracy_score(refs, hyps), abs=1e-12)
    # all hypotheses are valid labels here, so our class set is scikit-learn's default one
    assert macro_f1(refs, hyps, LABELS) == pytest.approx(f1_score(refs, hyps, average="macro"), abs=1e-12)
    assert macro_f1(refs, hyps, LABELS) == pytest.approx(f1_score(refs, hyps, labels=LABELS, average="macro"),
                                                         abs=1e-12)


def test_absent_classes_and_invalid_outputs():
    refs = ["anger", "anger", "sadness", "sadness", "neutral"]
    hyps = ["anger", "fear", "sadness", "no idea", "neutral"]
    # UA over the three classes present: anger 1/2, sadness 1/2, neutral 1
    assert unweighted_accuracy(refs, hyps, LABELS) == pytest.approx((0.5 + 0.5 + 1) / 3)
    assert weighted_accuracy(refs, hyps) == pytest.approx(3 / 5)
    # F1 over anger, sadness, neutral and the predicted-but-absent fear (0); "no idea" is no class
    f1 = {"anger": 2 / 3, "sadness": 2 / 3, "neutral": 1.0, "fear": 0.0}
    assert macro_f1(refs, hyps, LABELS) == pytest.approx(sum(f1.values()) / 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn warns about the class with no true sample
        assert macro_f1(refs, hyps, LABELS) == pytest.approx(
            f1_score(refs, hyps, labels=["anger", "sadness", "neutral", "fear"], average="macro", zero_division=0))
        assert unweighted_accuracy(refs, hyps, LABELS) == pytest.approx(balanced_accuracy_score(refs, hyps))
    per_class = per_class_accuracy(refs, hyps, LABELS)
    assert per_class["anger"] == 0.5 and per_class["neutral"] == 1.0 and per_class["fear"] is None
    cm = confusion(refs, hyps, LABELS)
    assert cm.shape == (7, 8)
    assert cm[LABELS.index("anger"), LABELS.index("fear")] == 1
    assert cm[LABELS.index("sadness"), -1] == 1  # the invalid output has its own column
    assert cm.sum() == len(refs)
    scores = classification_scores(refs, hyps, LABELS)
    assert scores["n"] == 5 and scores["invalid_rate"] == pytest.approx(1 / 5)
    assert INVALID not in LABELS


def test_reference_outside_the_label_list_is_an_error():
    with pytest.raises(ValueError, match="reference 1 has label 'joy'"):
        unweighted_accuracy(["anger", "joy"], ["anger", "anger"], LABELS)
    with pytest.raises(ValueError, match="as many"):
        macro_f1(["anger"], [], LABELS)


# --- distributions -------------------------------------------------------------------------------

def random_distributions(seed: int, n: int = 50, k: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(k, 0.5), size=n)
    p[rng.random((n, k)) < 0.3] = 0.0  # soft labels from votes leave most classes at 0
    p[:, 0] += 1e-3  # no all-zero row
    return p / p.sum(axis=1, keepdims=True)


def test_js_divergence_is_the_square_of_scipys_base2_distance():
    p, q = random_distributions(0), random_distributions(1)
    expected = np.array([jensenshannon(a, b, base=2) ** 2 for a, b in zip(p, q)])
    ours = js_divergence(p, q)
    assert np.abs(ours - expected).max() < 1e-12
    assert ours.min() >= 0 and ours.max() <= 1
    assert js_divergence([[1, 0, 0]], [[0, 0.5, 0.5]])[0] == pytest.approx(1.0)  # disjoint: 1 bit
    assert js_divergence(p, p).max() == pytest.approx(0.0, abs=1e-12)


# four utterances over two classes, worked by hand in the tests below
PRED = np.array([[0.9, 0.1], [0.85, 0.15], [0.3, 0.7], [0.55, 0.45]])
GOLD = np.array([[1.0, 0.0], [0.0, 1.0], [0.2, 0.8], [0.5, 0.5]])


def test_bhattacharyya_by_hand():
    expected = [math.sqrt(0.9), math.sqrt(0.15), math.sqrt(0.06) + math.sqrt(0.56), math.sqrt(0.275) + math.sqrt(0.225)]
    assert bhattacharyya(PRED, GOLD) == pytest.approx(expected, abs=1e-12)
    assert bhattacharyya([[0.2, 0.8]], [[0.2, 0.8]])[0] == pytest.approx(1.0)
    assert bhattacharyya([[1.0, 0.0]], [[0.0, 1.0]])[0] == 0.0


def test_brier_score_by_hand_is_the_mean_over_classes():
    squared = [0.1 ** 2 + 0.1 ** 2, 0.85 ** 2 + 0.85 ** 2, 0.1 ** 2 + 0.1 ** 2, 0.05 ** 2 + 0.05 ** 2]
    assert brier_score(PRED, GOLD) == pytest.approx(sum(squared) / (4 * 2), abs=1e-12)


def test_ece_and_argmax_accuracy_by_hand():
    # correct: yes, no, yes, yes (utterance 4: gold is a tie and the predicted class is one of its arg-maxes)
    assert argmax_accuracy(PRED, GOLD) == pytest.approx(3 / 4)
    # 5 bins: (0.8, 1] holds 0.9 and 0.85 (accuracy 1/2), (0.6, 0.8] holds 0.7, (0.4, 0.6] holds 0.55
    five = 2 / 4 * abs(0.5 - 0.875) + 1 / 4 * abs(1 - 0.7) + 1 / 4 * abs(1 - 0.55)
    assert expected_calibration_error(PRED, GOLD, n_bins=5) == pytest.approx(five, abs=1e-12)
    # 15 bins (default): 0.9 and 0.85 fall in different bins
    fifteen = (abs(1 - 0.9) + abs(0 - 0.85) + abs(1 - 0.7) + abs(1 - 0.55)) / 4
    assert expected_calibration_error(PRED, GOLD) == pytest.approx(fifteen, abs=1e-12)
    assert expected_calibration_error(GOLD[:1], GOLD[:1]) == 0.0  # confident and right


def test_dicts_in_label_order_and_row_checks():
    pred = [{"anger": 0.6, "sadness": 0.4}, {"neutral": 1.0}]
    gold = [{"anger": 0.3333, "sadness": 0.3333, "fear": 0.3333}, {"neutral": 1.0}]  # utt2dist rounding
    p = as_distributions(pred, LABELS)
    assert p.shape == (2, 7) and p[0, LABELS.index("sadness")] == 0.4
    assert as_distributions(gold, LABELS)[0].sum() == pytest.approx(1.0, abs=1e-15)
    assert js_divergence(pred, gold, LABELS) == pytest.approx(js_divergence(p, as_distributions(gold, LABELS)))
    scores = distribution_scores(pred, gold, LABELS)
    assert set(scores) == {"js", "bc", "brier", "ece", "acc", "n"} and scores["n"] == 2 and scores["acc"] == 1.0
    with pytest.raises(ValueError, match="label list"):
        as_distributions(pred)
    with pytest.raises(ValueError, match="'joy'"):
        as_distributions([{"joy": 1.0}], LABELS)
    with pytest.raises(ValueError, match="distribution 1"):
        as_distributions([[0.5, 0.5], [0.5, 0.6]])
    with pytest.raises(ValueError, match="distribution 0"):
        as_distributions([[1.5, -0.5]])
    with pytest.raises(ValueError, match="shape"):
        brier_score([[0.5, 0.5]], [[0.5, 0.25, 0.25]])
