"""The IEMOCAP preparer on a small fake copy of the release, with the traps of shared/corpora.md §2.8."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from local.data.audio import write_wav
from local.data.corpora.files import CorpusError
from local.data.corpora.iemocap import prepare
from local.data.kaldi import parse_dist, validate_data_dir

# dialog -> [(IEMOCAP id, consensus code, C- lines (rater, categories), transcript)]
SESSIONS = {
    1: {
        "Ses01F_impro01": [
            ("Ses01F_impro01_F000", "neu", [("E2", "Neutral;"), ("E3", "Neutral;"), ("F1", "Anger;")], "Excuse me."),
            ("Ses01F_impro01_M000", "xxx", [("E1", "Frustration; Anger;"), ("E2", "Neutral;")],
             "Do you have your forms? [LAUGHTER]"),
        ],
        "Ses01F_script01_1": [
            ("Ses01F_script01_1_M001", "exc", [("E1", "Excited;"), ("E3", "Excited; Happiness;")], "What a day."),
        ],
        "Ses01M_impro05a": [  # a-suffixed dialog of the male actor; this turn is the female actor's
            ("Ses01M_impro05a_F002", "hap", [("E1", "Happiness;"), ("E2", "Other; Surprise;")], "Oh really!"),
        ],
    },
    5: {
        "Ses05F_script02_2": [
            ("Ses05F_script02_2_M046", "sad", [("E1", "Sadness;"), ("E4", "Sadness;"), ("M1", "Neutral;")], "Never mind."),
            ("Ses05F_script02_2_F010", "ang", [("E1", "Anger;"), ("E2", "Anger; Frustration;")], "Stop it."),
        ],
    },
}


def evaluation(turns) -> str:
    lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
    for i, (ident, code, ratings, _) in enumerate(turns):
        lines.append(f"[{i + 1.0:.4f} - {i + 1.5:.4f}]\t{ident}\t{code}\t[2.5000, 3.0000, 2.0000]")
        lines += [f"C-{rater}:\t{cats}\t(a comment; with a semicolon)" for rater, cats in ratings]
        lines += ["A-E3:\tval 3; act 2; dom  2;\t()", ""]
    return "\n".join(lines)


def build(root: Path) -> Path:
    """IEMOCAP_full_release/ under ``root``, as released, with junk, an XX turn, CRLF and cp1252 text."""
    release = root / "IEMOCAP_full_release"
    for number, dialogs in SESSIONS.items():
        session = release / f"Session{number}"
        for dialog, turns in dialogs.items():
            ev = session / "dialog" / "EmoEvaluation" / f"{dialog}.txt"
            ev.parent.mkdir(parents=True, exist_ok=True)
            newline = "\r\n" if dialog == "Ses01F_impro01" else "\n"
            ev.write_bytes(evaluation(turns).replace("\n", newline).encode("ascii"))
            tr = session / "dialog" / "transcriptions" / f"{dialog}.txt"
            tr.parent.mkdir(parents=True, exist_ok=True)
            lines = [f"{ident} [{i + 1.0:08.4f}-{i + 1.5:08.4f}]: {text}" for i, (ident, _, _, text) in enumerate(turns)]
            lines.insert(1, f"{dialog}_MXX0 [009.0000-010.0000]: Mm-hmm.")  # a turn with no audio, no label
            lines.append("this line is not a turn")
            tr.write_bytes(("\n".join(lines) + "\n").encode("cp1252"))
            (session / "sentences" / "wav" / dialog).mkdir(parents=True, exist_ok=True)
            for ident, *_ in turns:
                write_wav(session / "sentences" / "wav" / dialog / f"{ident}.wav", np.zeros(1600, np.float32))
        categorical = session / "dialog" / "EmoEvaluation" / "Categorical"
        categorical.mkdir(exist_ok=True)
        (categorical / "x_e1_cat.txt").write_text("Ses01F_impro01_F000 :Neutral state; ()\n")
    junk = release / "Session1" / "dialog" / "EmoEvaluation" / "._Ses01F_impro01.txt"
    junk.write_bytes(b"\x00\x05\x16\x07 resource fork")
    (release / "Session1" / "sentences" / "wav" / "Ses01F_impro01" / "._Ses01F_impro01_F000.wav").write_bytes(b"junk")
    return release


@pytest.fixture
def release(tmp_path):
    return build(tmp_path / "db")


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
