"""The Emo-Emilia preparer on a small fake copy of the C2SER repository's Emo-Emilia/ folder."""
from __future__ import annotations

import pytest
from helpers.fake_emo_emilia import build

from local.data.corpora.emo_emilia import prepare
from local.data.corpora.files import CorpusError


@pytest.fixture
def root(tmp_path):
    return build(tmp_path)


def test_ids_speakers_languages_labels_and_text(root):
    data = prepare(root)["test"]
    assert data.utts == ["EN_B00012_S04567_W000003", "EN_B00012_S04567_W000004", "ZH_B00090_S00350_W000000"]
    assert data["utt2spk"]["EN_B00012_S04567_W000004"] == "EN_B00012_S04567"
    assert data["utt2lang"] == {"EN_B00012_S04567_W000003": "en", "EN_B00012_S04567_W000004": "en",
                                "ZH_B00090_S00350_W000000": "cmn"}
    assert data["text"]["EN_B00012_S04567_W000003"] == "Wait, you did what?"
    assert data["utt2emo"]["ZH_B00090_S00350_W000000"] == "angry" and not data.rejected


def test_audio_elsewhere_is_found_by_name(root, tmp_path):
    moved = root / "audio_copy"
    (root / "Emo-Emilia" / "wav").rename(moved)
    assert len(prepare(root)["test"]) == 3


def test_a_missing_wav_and_a_corrupted_line_are_rejected_and_nothing_else_is_lost(root):
    (root / "Emo-Emilia" / "wav" / "EN_B00012_S04567_W000004.wav").unlink()
    jsonl = root / "Emo-Emilia" / "Emo-Emilia-ALL.jsonl"
    jsonl.write_text(jsonl.read_text(encoding="utf-8").replace('"emotion": "angry", ', '"emotion": "angry" ',),
                     encoding="utf-8")
    data = prepare(root)["test"]
    assert data.utts == ["EN_B00012_S04567_W000003"]
    assert data.rejected["EN_B00012_S04567_W000004"].startswith("no audio: ./Emo-Emilia/wav/EN_B00012_S04567_W000004")
    assert f"{jsonl}:1: cannot read the line (JSONDecodeError" in data.rejected["ZH_B00090_S00350_W000000"]


def test_a_root_without_the_jsonl_names_the_variable(tmp_path):
    with pytest.raises(CorpusError, match="EMO_EMILIA=.*Emo-Emilia-ALL.jsonl"):
        prepare(tmp_path)
