"""The ESD preparer on a small fake copy: a Mandarin speaker in the release layout (gb2312 transcript),
an English one in the flat layout (UTF-16 transcript, one line with spaces for tabs)."""
from __future__ import annotations

import pytest
from helpers.fake_esd import build

from local.data.corpora.esd import prepare
from local.data.corpora.files import CorpusError


@pytest.fixture
def root(tmp_path):
    return build(tmp_path)


def test_splits_labels_transcripts_in_both_layouts_and_encodings(root):
    sets = prepare(root)
    assert sets["evaluation"].utts == ["0001_000001", "0001_000351", "0012_000001"]
    assert sets["test"].utts == ["0001_000021", "0012_000021"]
    assert sets["train"].utts == ["0001_000051", "0012_001451"]
    assert sets["evaluation"]["utt2emo"]["0001_000351"] == "Angry"
    assert sets["evaluation"]["text"]["0001_000001"] == "打开窗户。"
    assert sets["test"]["text"]["0012_000021"] == "I know you do."  # spaces for tabs
    assert sets["train"]["utt2emo"]["0012_001451"] == "Surprise"
    assert sets["train"]["utt2lang"] == {"0001_000051": "cmn", "0012_001451": "en"}
    assert not any(d.rejected for d in sets.values())


def test_a_missing_wav_and_a_corrupted_line_are_rejected_and_nothing_else_is_lost(root):
    base = root / "Emotion Speech Dataset"
    (base / "0001" / "Neutral" / "test" / "0001_000021.wav").unlink()
    txt = base / "0012" / "0012.txt"
    txt.write_bytes(txt.read_bytes().decode("utf-16").replace("\tSurprise", "\tSurprised?").encode("utf-16"))
    sets = prepare(root)
    rejected = {u: why for d in sets.values() for u, why in d.rejected.items()}
    assert sorted(rejected) == ["0001_000021", "0012_001451"]
    assert rejected["0001_000021"].startswith("no audio: 0001_000021.wav")
    assert f"{txt}:3: cannot read the line" in rejected["0012_001451"]
    assert sum(len(d) for d in sets.values()) == 5


def test_an_emotion_folder_that_disagrees_is_rejected(root):
    base = root / "Emotion Speech Dataset" / "0012"
    (base / "Neutral" / "0012_000001.wav").rename(base / "Surprise" / "0012_000001.wav")
    rejected = prepare(root)["evaluation"].rejected
    assert list(rejected) == ["0012_000001"] and "emotion folder Surprise, Neutral in 0012.txt" in rejected["0012_000001"]


def test_a_root_without_speakers_names_the_variable(tmp_path):
    with pytest.raises(CorpusError, match=r"ESD=.*speaker folders 0001 \.\.\. 0020"):
        prepare(tmp_path)
