"""The EmoBox-style linear probe: it learns a separable problem, scores like scikit-learn, folds by speaker."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from local.data.kaldi import DataDir, read_table
from local.eval.metrics import classification_scores
from local.eval.probe import Batches, Examples, ProbeHead, kfold, predict, run, train_probe
from local.models.emotion2vec_s import Emotion2VecConfig, Emotion2VecS
from local.utils.hydra import compose

from conftest import make_data_dir

LABELS = ["anger", "neutral", "sadness"]
QUICK = {"max_epochs": 8, "max_steps": None, "lr": 1e-2, "weight_decay": 0.0, "schedule": "constant",
         "warmup": 0, "clip_norm": None, "save_every": None, "keep_last": 1, "log_every": 1000, "progress": False}


def toy(n: int, seed: int, noise: float = 1.0) -> Examples:
    """Frames around a class mean (+2 on the class's own dimension), 5 to 30 frames long."""
    rng = np.random.default_rng(seed)
    utts, frames, labels = [], [], []
    for i in range(n):
        c = i % 3
        mean = np.zeros(6, dtype=np.float32)
        mean[c] = 2.0
        x = mean + noise * rng.standard_normal((int(rng.integers(5, 31)), 6)).astype(np.float32)
        utts.append(f"u{seed}-{i:03d}")
        frames.append(x)
        labels.append(LABELS[c])
    return Examples(utts, frames, labels)


def test_probe_learns_a_separable_problem_and_scores_like_sklearn(tmp_path):
    head = train_probe(toy(90, 0), toy(30, 1), LABELS, tmp_path / "run", QUICK, hidden=16, batch_size=16)
    test = toy(60, 2, noise=1.5)
    hyps = predict(head, Batches(test, LABELS, 7, shuffle=False), LABELS)
    scores = classification_scores(test.labels, hyps, LABELS)
    assert scores["ua"] > 0.9
    assert scores["ua"] == pytest.approx(balanced_accuracy_score(test.labels, hyps), abs=1e-12)
    assert scores["wa"] == pytest.approx(accuracy_score(test.labels, hyps), abs=1e-12)
    assert scores["f1"] == pytest.approx(f1_score(test.labels, hyps, average="macro"), abs=1e-12)
    assert (tmp_path / "run/checkpoints/best.pt").is_file()  # the best dev epoch was kept


def test_head_ignores_padding_and_feature_scale():
    torch.manual_seed(0)
    head = ProbeHead(6, 3, hidden=8)
    a, b = torch.randn(7, 6), torch.randn(4, 6)
    batch = torch.nn.utils.rnn.pad_sequence([a, b], batch_first=True)
    padded = head(batch, torch.tensor([7, 4]))
    torch.testing.assert_close(padded[1], head(b[None], torch.tensor([4]))[0], atol=1e-6, rtol=0)
    # the uniform layer norm makes a frame's scale and offset irrelevant
    torch.testing.assert_close(head(3 * a[None] + 1, torch.tensor([7])), padded[:1], atol=1e-4, rtol=0)


def test_kfold_is_speaker_disjoint_and_tests_every_utterance_once():
    data = toy(60, 0)
    spk_of = {u: f"spk{i % 5}" for i, u in enumerate(data.utts)}
    folds = kfold(data, spk_of, k=5, dev_fraction=0.2, seed=0)
    tested = [u for _, _, test in folds for u in test.utts]
    assert sorted(tested) == sorted(data.utts)
    for train, dev, test in folds:
        held = {spk_of[u] for u in test.utts}
        assert held.isdisjoint({spk_of[u] for u in train.utts + dev.utts})
        assert len(dev.utts) == pytest.approx(0.2 * (len(train.utts) + len(dev.utts)), abs=1)
        assert set(dev.labels) == set(LABELS)
    with pytest.raises(ValueError, match="speakers"):
        kfold(data, spk_of, k=6, dev_fraction=0.2, seed=0)


@pytest.mark.slow
def test_stage_writes_the_table_and_the_predictions_it_scored(tmp_path):
    source = DataDir.load(make_data_dir(tmp_path / "audio", n_spk=4, n_utt=6))
    for name, speakers in (("train", ("spk0", "spk1")), ("dev", ("spk2",)), ("test", ("spk3",))):
        source.subset(u for u in source.utts if source["utt2spk"][u] in speakers).save(tmp_path / "data" / name)
    torch.manual_seed(0)
    Emotion2VecS(Emotion2VecConfig.preset("tiny")).save_pretrained(tmp_path / "enc")
    cfg = compose([f"data_root={tmp_path / 'data'}", f"exp_root={tmp_path / 'exp'}",
                   f"probe.encoders=[{{name: tiny, model: {tmp_path / 'enc'}}}]", "probe.seeds=[0,1]",
                   "probe.trainer.max_epochs=3", "probe.hidden=8"])
    summary = run(cfg)
    out = tmp_path / "exp" / "probe"
    results = json.loads((out / "results.json").read_text())
    assert results["summary"] == summary and summary["tiny"]["runs"] == 2
    refs = read_table(tmp_path / "data/test/utt2emo")
    for record in results["runs"]["tiny"]:
        hyp = read_table(out / "runs/tiny/test" / f"seed{record['seed']}" / "hyp")
        assert sorted(hyp) == sorted(refs)
        r, h = [refs[u] for u in sorted(refs)], [hyp[u] for u in sorted(refs)]
        assert record["ua"] == pytest.approx(balanced_accuracy_score(r, h), abs=1e-12)
        assert record["wa"] == pytest.approx(accuracy_score(r, h), abs=1e-12)
        assert record["f1"] == pytest.approx(f1_score(r, h, labels=sorted(set(r) | set(h)), average="macro"), abs=1e-12)
    mean_ua = np.mean([r["ua"] for r in results["runs"]["tiny"]])
    assert f"| tiny | {100 * mean_ua:.2f} ± " in (out / "results.md").read_text()
    assert (out / "feats/tiny/test/frames.scp").is_file()


def test_given_folds_and_their_missing_dev_sets():
    from omegaconf import OmegaConf

    from local.eval.probe import _folds
    sets = {"a": toy(30, 0), "b": toy(30, 1), "c": toy(15, 2)}
    opts = OmegaConf.create({"protocol": "folds", "dev_fraction": 0.2,
                             "folds": [{"train": "a", "dev": "b", "test": "c"},
                                       {"train": "b", "dev": None, "test": "a"}]})
    (n1, train1, dev1, test1), (n2, train2, dev2, test2) = _folds(opts, OmegaConf.create({"seed": 0}), sets, {})
    assert (n1, n2) == ("fold1", "fold2")
    assert train1.utts == sets["a"].utts and dev1.utts == sets["b"].utts and test1.utts == sets["c"].utts
    assert sorted(train2.utts + dev2.utts) == sorted(sets["b"].utts) and len(dev2.utts) == 6
    assert test2.utts == sets["a"].utts
