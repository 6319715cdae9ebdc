"""The IEMOCAP preparer on a small fake copy of the release, with the traps of shared/corpora.md §2.8."""
from __future__ import annotations

from pathlib import Path

import pytest
from helpers.fake_iemocap import SESSIONS, build

from local.data.corpora.files import CorpusError
from local.data.corpora.iemocap import prepare
from local.data.kaldi import parse_dist, validate_data_dir

@pytest.fixture
def release(tmp_path):
    return build(tmp_path / "db", SESSIONS)


def test_ids_speakers_labels_soft_labels_transcripts_and_audio(release, tmp_path):
    sessions = prepare(release.parent, tmp_path / "data")  # the folder above the release works too
    assert sorted(sessions) == ["session1", "session5"]
    s1 = sessions["session1"]
    assert s1.utts == ["Ses01F-Ses01F_impro01_F000", "Ses01F-Ses01M_impro05a_F002",
                       "Ses01M-Ses01F_impro01_M000", "Ses01M-Ses01F_script01_1_M001"]
    assert s1["utt2spk"]["Ses01F-Ses01M_impro05a_F002"] == "Ses01F"  # the last field's letter, not the dialog's
    assert s1["utt2emo"] == {"Ses01F-Ses01F_impro01_F000": "neu", "Ses01F-Ses01M_impro05a_F002": "hap",
                             "Ses01M-Ses01F_impro01_M000": "xxx", "Ses01M-Ses01F_script01_1_M001": "exc"}
    # external raters only (C-F1's Anger is the actor's own); a rater's categories share one vote
    assert parse_dist(s1["utt2dist"]["Ses01F-Ses01F_impro01_F000"]) == {"neutral": 1.0}
    assert parse_dist(s1["utt2dist"]["Ses01M-Ses01F_impro01_M000"]) == {"anger": 0.25, "frustration": 0.25,
                                                                        "neutral": 0.5}
    assert parse_dist(s1["utt2dist"]["Ses01M-Ses01F_script01_1_M001"]) == {"excited": 0.75, "happiness": 0.25}
    assert s1["text"]["Ses01M-Ses01F_impro01_M000"] == "Do you have your forms? [LAUGHTER]"
    assert s1["utt2subset"]["Ses01M-Ses01F_script01_1_M001"] == "script"
    assert set(s1["utt2lang"].values()) == {"en"} and not s1.rejected
    for utt, path in s1["wav.scp"].items():
        assert Path(path).is_file() and Path(path).stem == utt.split("-", 1)[1]
    s5 = sessions["session5"]
    assert s5["utt2spk"] == {"Ses05F-Ses05F_script02_2_F010": "Ses05F", "Ses05M-Ses05F_script02_2_M046": "Ses05M"}
    assert parse_dist(s5["utt2dist"]["Ses05M-Ses05F_script02_2_M046"]) == {"sadness": 1.0}
    labels = {"neu", "hap", "exc", "sad", "ang", "xxx", "neutral", "anger", "frustration", "excited", "happiness",
              "sadness", "surprise", "other"}
    for name in sessions:
        written = validate_data_dir(tmp_path / "data" / name, labels=labels)
        assert written.tables == sessions[name].tables


def test_votes_per_tag(release):
    s1 = prepare(release, vote_weight="tag")["session1"]
    assert parse_dist(s1["utt2dist"]["Ses01M-Ses01F_script01_1_M001"]) == pytest.approx(
        {"excited": 2 / 3, "happiness": 1 / 3}, abs=1e-4)  # utt2dist holds 4 decimals


def test_a_missing_wav_and_a_corrupted_line_are_rejected_with_reasons_and_nothing_else_is_lost(release):
    clean = prepare(release)
    (release / "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav").unlink()
    ev = release / "Session5/dialog/EmoEvaluation/Ses05F_script02_2.txt"
    ev.write_text(ev.read_text().replace("[1.0000 - 1.5000]\tSes05F_script02_2_M046\tsad",
                                         "[1.0000 - 1.5000\tSes05F_script02_2_M046 sad"))
    sessions = prepare(release)
    rejected = {**sessions["session1"].rejected, **sessions["session5"].rejected}
    assert sorted(rejected) == ["Ses01F-Ses01F_impro01_F000", "Ses05M-Ses05F_script02_2_M046"]
    assert "no audio" in rejected["Ses01F-Ses01F_impro01_F000"]
    assert f"{ev}:3: cannot read the summary line" in rejected["Ses05M-Ses05F_script02_2_M046"]
    for name, data in sessions.items():
        kept = clean[name].subset(set(clean[name].utts) - set(rejected))
        assert data.tables == kept.tables


def test_a_broken_category_line_rejects_its_utterance(release):
    ev = release / "Session5/dialog/EmoEvaluation/Ses05F_script02_2.txt"
    ev.write_text(ev.read_text().replace("C-E4:\tSadness;", "C-E4 Sadness;"))
    rejected = prepare(release)["session5"].rejected
    assert list(rejected) == ["Ses05M-Ses05F_script02_2_M046"]
    assert "cannot read the category line" in rejected["Ses05M-Ses05F_script02_2_M046"]


def test_a_wrong_root_names_the_variable_to_set(tmp_path):
    with pytest.raises(CorpusError, match=r"IEMOCAP=.*no such directory"):
        prepare(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match=r"IEMOCAP=.*found no Session\[1-5\].*Session1 \.\.\. Session5"):
        prepare(tmp_path / "empty")
