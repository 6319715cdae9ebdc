"""The EmoBox reader on a fake EmoBox repository (data/<ds>/) with the audio in the user's downloads."""
from __future__ import annotations

import pytest
from helpers.fake_emobox import build

from local.data.corpora.emobox import prepare


@pytest.fixture
def emobox(tmp_path):
    build(tmp_path, downloads=tmp_path / "mine")
    return tmp_path


def test_parts_speakers_labels_and_audio_from_the_downloads(emobox):
    parts = prepare(emobox / "EmoBox", dataset="ravdess", downloads=emobox / "mine")
    assert sorted(parts) == ["all", "fold1_test", "fold1_train"]
    assert parts["fold1_test"].utts == ["02-ravdess-03-01-02-01-01-01-02"]
    assert parts["all"]["utt2emo"] == {"01-ravdess-03-01-01-01-01-01-01": "neutral",
                                       "01-ravdess-03-01-06-01-01-01-01": "fear",
                                       "02-ravdess-03-01-02-01-01-01-02": "calm"}
    assert set(parts["all"]["utt2lang"].values()) == {"en"} and not parts["all"].rejected
    assert parts["all"]["wav.scp"]["01-ravdess-03-01-01-01-01-01-01"].startswith(str((emobox / "mine").resolve()))


def test_a_missing_wav_and_a_corrupted_line_are_rejected_and_nothing_else_is_lost(emobox):
    (emobox / "mine/ravdess/audio/Audio_Speech_Actors_01-24/Actor_02/03-01-02-01-01-01-02.wav").unlink()
    jsonl = emobox / "EmoBox/data/ravdess/ravdess.jsonl"
    jsonl.write_text(jsonl.read_text().replace('"emo": "Fearful",', '"emo": "Fearful"'))
    data = prepare(emobox / "EmoBox", dataset="ravdess", downloads=emobox / "mine")["all"]
    assert data.utts == ["01-ravdess-03-01-01-01-01-01-01"]
    assert data.rejected["02-ravdess-03-01-02-01-01-01-02"].startswith("no audio:")
    assert f"{jsonl}:2: cannot read the line" in data.rejected["ravdess-03-01-06-01-01-01-01"]


def test_iemocap_speakers_are_not_emoboxs_dialog_prefix(tmp_path):
    wav = "downloads/iemocap/Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_M000.wav"
    emobox = build(tmp_path, dataset="iemocap", records=[("iemocap-Ses01F_impro01_M000", "neu", wav, "Ses01F")],
                   folds={}, label_map=None, sr=16000)  # no downloads given: under EmoBox's folder
    data = prepare(emobox, dataset="iemocap")["all"]
    assert data["utt2spk"] == {"Ses01M-iemocap-Ses01F_impro01_M000": "Ses01M"}
