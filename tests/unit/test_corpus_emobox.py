"""The EmoBox reader on a fake EmoBox repository (data/<ds>/) with the audio in the user's downloads."""
from __future__ import annotations

import json

import numpy as np
import pytest

from local.data.audio import write_wav
from local.data.corpora.emobox import prepare

RAVDESS = [("ravdess-03-01-01-01-01-01-01", "Neutral", "Actor_01/03-01-01-01-01-01-01", "01"),
           ("ravdess-03-01-06-01-01-01-01", "Fearful", "Actor_01/03-01-06-01-01-01-01", "01"),
           ("ravdess-03-01-02-01-01-01-02", "Calm", "Actor_02/03-01-02-01-01-01-02", "02")]


def record(key, emo, wav):
    return json.dumps({"key": key, "dataset": "ravdess", "wav": wav, "type": "raw", "sample_rate": 48000,
                       "num_frame": 4800.0, "task": "category", "length": 0.1, "emo": emo, "channel": 1})


@pytest.fixture
def emobox(tmp_path):
    meta = tmp_path / "EmoBox" / "data" / "ravdess"
    (meta / "fold_1").mkdir(parents=True)
    lines = [record(k, e, f"downloads/ravdess/audio/Audio_Speech_Actors_01-24/{w}.wav") for k, e, w, _ in RAVDESS]
    (meta / "ravdess.jsonl").write_text("\n".join(lines) + "\n")
    (meta / "fold_1" / "ravdess_train_fold_1.jsonl").write_text("\n".join(lines[:2]) + "\n")
    (meta / "fold_1" / "ravdess_test_fold_1.jsonl").write_text(lines[2] + "\n")
    (meta / "label_map.json").write_text(json.dumps({"Neutral": "Neutral", "Calm": "Calm", "Fearful": "Fear"}))
    (meta / "data.seg.wrd.stm").write_text("".join(
        f"{k} 1 {spk} 0.0 0.1 <id={k},lang=en,spk={spk},emotion={e}> {e}\n" for k, e, _, spk in RAVDESS))
    for _, _, wav, _ in RAVDESS:
        path = tmp_path / "mine" / "ravdess" / "audio" / "Audio_Speech_Actors_01-24" / f"{wav}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_wav(path, np.zeros(4800, np.float32), 48000)
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
    meta = tmp_path / "EmoBox" / "data" / "iemocap"
    meta.mkdir(parents=True)
    wav = "downloads/iemocap/Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_M000.wav"
    (meta / "iemocap.jsonl").write_text(json.dumps({"key": "iemocap-Ses01F_impro01_M000", "wav": wav, "emo": "neu"}))
    (meta / "data.seg.wrd.stm").write_text("iemocap-Ses01F_impro01_M000 1 Ses01F 0 1 <spk=Ses01F> neu\n")
    (tmp_path / "EmoBox" / wav).parent.mkdir(parents=True)
    write_wav(tmp_path / "EmoBox" / wav, np.zeros(160, np.float32))  # no downloads given: under EmoBox's folder
    data = prepare(tmp_path / "EmoBox", dataset="iemocap")["all"]
    assert data["utt2spk"] == {"Ses01M-iemocap-Ses01F_impro01_M000": "Ses01M"}
