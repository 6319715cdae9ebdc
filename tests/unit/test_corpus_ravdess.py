"""The RAVDESS preparer on a small fake copy of the speech zip, nested as EmoBox keeps it."""
from __future__ import annotations

import numpy as np
import pytest
from helpers.fake_ravdess import build

from local.data.audio import write_wav
from local.data.corpora.files import CorpusError
from local.data.corpora.ravdess import prepare


@pytest.fixture
def root(tmp_path):
    return build(tmp_path)


def test_fields_from_the_file_names(root):
    data = prepare(root)["all"]
    assert data.utts == ["Actor_01-03-01-01-01-01-01-01", "Actor_01-03-01-02-02-02-01-01",
                         "Actor_02-03-01-08-01-01-02-02"]
    assert data["utt2emo"] == {"Actor_01-03-01-01-01-01-01-01": "neutral", "Actor_01-03-01-02-02-02-01-01": "calm",
                               "Actor_02-03-01-08-01-01-02-02": "surprised"}
    assert data["utt2int"]["Actor_01-03-01-02-02-02-01-01"] == "strong"
    assert data["text"]["Actor_01-03-01-02-02-02-01-01"] == "Dogs are sitting by the door."
    assert data["utt2spk"]["Actor_02-03-01-08-01-01-02-02"] == "Actor_02" and not data.rejected
    assert len(prepare(root, song=True)["all"]) == 4


def test_bad_file_names_are_rejected_with_reasons_and_nothing_else_is_lost(root, tmp_path):
    base = root / "ravdess" / "audio" / "Audio_Speech_Actors_01-24"
    write_wav(base / "Actor_01" / "03-01-09-01-01-01-01.wav", np.zeros(480, np.float32), 48000)
    write_wav(base / "Actor_02" / "03-01-03-01-01-01-05.wav", np.zeros(480, np.float32), 48000)
    data = prepare(root, tmp_path / "data")["all"]
    assert len(data) == 3 and set(data.rejected) == {"Actor_01-03-01-09-01-01-01-01", "Actor_02-03-01-03-01-01-01-05"}
    assert data.rejected["Actor_01-03-01-09-01-01-01-01"].endswith("unknown emotion code 09 in the file name")
    assert "actor 05 of the file name is not its folder's (Actor_02)" in data.rejected["Actor_02-03-01-03-01-01-01-05"]
    assert (tmp_path / "data" / "all" / "rejected").read_text().count("\n") == 2


def test_a_root_without_actors_names_the_variable(tmp_path):
    with pytest.raises(CorpusError, match=r"RAVDESS=.*found no \*\*/Actor_"):
        prepare(tmp_path)
