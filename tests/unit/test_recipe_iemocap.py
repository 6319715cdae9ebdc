"""egs/iemocap stages 0-1 on a fake IEMOCAP of five sessions: the fold's sets, the 4-class label set."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.fake_iemocap import build, five_sessions

from local.data.corpora.sets import fold_sets, select
from local.data.kaldi import DataDir, parse_dist

ROOT = Path(__file__).resolve().parents[2]


def run(recipe: Path, module: str, *overrides: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, "data_root=data", "dump_root=dump", "exp_root=exp",
                           "nj=1", *overrides], cwd=recipe, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture
def recipe(tmp_path):
    release = build(tmp_path / "db", five_sessions())
    shutil.copytree(ROOT / "egs" / "iemocap", tmp_path / "iemocap")
    env = dict(os.environ, IEMOCAP=str(release), EMOREASON_RECIPE="iemocap")
    return tmp_path / "iemocap", env


def test_stages_0_and_1_write_the_folds_sets_in_the_4_class_set(recipe):
    path, env = recipe
    out = run(path, "local.bin.prepare", "corpus=iemocap", env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    sets = {name: DataDir.load(path / "data" / name) for name in ("train", "dev", "test")}
    assert set(sets["test"]["utt2spk"].values()) == {"Ses05F", "Ses05M"}  # fold 5: Session 5 is the test set
    assert set(sets["dev"]["utt2spk"].values()) == {"Ses04F", "Ses04M"}
    assert {s[:5] for s in sets["train"]["utt2spk"].values()} == {"Ses01", "Ses02", "Ses03"}
    out = run(path, "local.bin.format", "corpus=iemocap", env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    train = DataDir.load(path / "data" / "train")
    assert set(train["utt2emo"].values()) <= {"anger", "happiness", "neutral", "sadness"}
    assert train["utt2emo"]["Ses01M-Ses01F_script01_1_M001"] == "happiness"  # exc merged
    assert "dropped by corpus.label_map" in train.rejected["Ses01M-Ses01F_impro01_M000"]  # xxx
    assert "dropped by corpus.label_map" in train.rejected["Ses02M-Ses02F_impro02_M000"]  # fru
    # its second rater said "Other; Surprise;": outside the set, taken out of the soft label
    assert parse_dist(train["utt2dist"]["Ses01F-Ses01M_impro05a_F002"]) == {"happiness": 1.0}


def test_another_fold_and_a_missing_root(recipe):
    path, env = recipe
    assert run(path, "local.bin.prepare", "corpus=iemocap", "corpus.fold=1", env=env).returncode == 0
    test = DataDir.load(path / "data" / "test")
    assert {s[:5] for s in test["utt2spk"].values()} == {"Ses01"}
    out = run(path, "local.bin.prepare", "corpus=iemocap", env={**env, "IEMOCAP": ""})
    assert out.returncode != 0 and "corpus.db is empty: set IEMOCAP (db.sh)" in out.stderr


def test_speaker_selectors():
    part = DataDir({"utt2spk": {"a-1": "a", "b-1": "b", "c-1": "c"}}, rejected={"b-2": "no audio", "z-9": "?"})
    sets = fold_sets({"all": part}, {1: {"test": [{"part": "all", "speakers": ["b"]}],
                                         "train": [{"part": "all", "except_speakers": ["b"]}]}}, 1)
    assert sets["test"].utts == ["b-1"] and sets["test"].rejected == {"b-2": "no audio"}
    assert sets["train"].utts == ["a-1", "c-1"] and sets["train"].rejected == {"z-9": "?"}
    with pytest.raises(ValueError, match=r"part 'all' has no speaker \['q'\]"):
        select({"all": part}, {"part": "all", "speakers": ["q"]})
    with pytest.raises(ValueError, match=r"no part 'everything'"):
        select({"all": part}, "everything")
    with pytest.raises(ValueError, match=r"corpus.fold=2: not one of corpus.folds \['1'\]"):
        fold_sets({"all": part}, {1: {}}, 2)


def test_run_sh_takes_the_fake_iemocap_through_stage_3(recipe, tmp_path):
    """The recipe as a user runs it (stage 4 and later need the real-size models of the recipe)."""
    _, env = recipe
    out = subprocess.run([str(ROOT / "egs" / "iemocap" / "run.sh"), "--stop_stage", "3", "--nj", "1",
                          "--data_root", str(tmp_path / "data"), "--dump_root", str(tmp_path / "dump"),
                          "--exp_root", str(tmp_path / "exp")], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "per label (ang hap neu sad)" in out.stdout
    assert "unknown label" not in out.stdout + out.stderr  # stage 0 writes IEMOCAP's own codes: no false alarm
    assert "| test | 2 | 0 |" in out.stdout  # Session 5's two utterances, none lost
    assert (tmp_path / "data" / "train" / "targets.jsonl").is_file()


def test_another_corpus_as_an_extra_test_set(recipe, tmp_path):
    """Cross-corpus through stage 0: a part of another corpus, its root from its db.sh variable."""
    path, env = recipe
    spec = "{preparer: iemocap, var: OTHER_IEMOCAP, part: session2}"
    out = run(path, "local.bin.prepare", "corpus=iemocap", f"+corpus.extra_test_sets.other={spec}",
              env={**env, "OTHER_IEMOCAP": env["IEMOCAP"]})
    assert out.returncode == 0, out.stderr[-3000:]
    other = DataDir.load(path / "data" / "other")
    assert {s[:5] for s in other["utt2spk"].values()} == {"Ses02"}
    out = run(path, "local.bin.prepare", "corpus=iemocap", f"+corpus.extra_test_sets.other={spec}", env=env)
    assert out.returncode != 0 and "corpus.extra_test_sets.other: $OTHER_IEMOCAP is empty: set OTHER_IEMOCAP" in out.stderr
    bad = spec.replace("session2", "session9")
    out = run(path, "local.bin.prepare", "corpus=iemocap", f"+corpus.extra_test_sets.other={bad}",
              env={**env, "OTHER_IEMOCAP": env["IEMOCAP"]})
    assert out.returncode != 0 and "iemocap has no part 'session9'" in out.stderr
