"""The CREMA-D preparer on a small fake copy of the repository, with its vote table."""
from __future__ import annotations

import pytest
from helpers.fake_crema_d import build

from local.data.corpora.crema_d import prepare
from local.data.corpora.files import CorpusError
from local.data.kaldi import parse_dist


@pytest.fixture
def root(tmp_path):
    return build(tmp_path)


def test_fields_and_soft_labels_from_the_voice_only_votes(root):
    data = prepare(root)["all"]
    assert data.utts == ["1001_DFA_ANG_XX", "1001_IEO_HAP_LO", "1002_WSI_SAD_XX"]
    assert data["utt2spk"]["1002_WSI_SAD_XX"] == "1002" and data["utt2emo"]["1001_IEO_HAP_LO"] == "HAP"
    assert data["utt2int"] == {"1001_DFA_ANG_XX": "unspecified", "1001_IEO_HAP_LO": "low",
                               "1002_WSI_SAD_XX": "unspecified"}
    assert data["text"]["1001_IEO_HAP_LO"] == "It's eleven o'clock."
    assert parse_dist(data["utt2dist"]["1001_DFA_ANG_XX"]) == pytest.approx(
        {"anger": 0.75, "disgust": 0.125, "neutral": 0.125}, abs=1e-4)  # not the face's 9 anger votes
    assert parse_dist(data["utt2dist"]["1002_WSI_SAD_XX"]) == {"neutral": 0.5, "sadness": 0.5}
    assert data.rejected == {"1076_MTI_SAD_XX": f"{(root / 'AudioWAV' / '1076_MTI_SAD_XX.wav').resolve()}: "
                                                "no signal in the released audio (CREMA-D README)"}


def test_a_missing_wav_and_a_corrupted_vote_row_are_rejected_and_nothing_else_is_lost(root):
    (root / "AudioWAV" / "1001_IEO_HAP_LO.wav").unlink()
    votes = root / "processedResults" / "tabulatedVotes.csv"
    votes.write_text(votes.read_text().replace('"100003",0,0,0,0,4,4', '"100003",0,0,x,0,4,4'))
    data = prepare(root)["all"]
    assert data.utts == ["1001_DFA_ANG_XX"]
    assert set(data.rejected) == {"1001_IEO_HAP_LO", "1002_WSI_SAD_XX", "1076_MTI_SAD_XX"}  # the last: known bad
    assert data.rejected["1001_IEO_HAP_LO"].startswith("no audio: 1001_IEO_HAP_LO.wav is not under")
    assert f"{votes}:7: cannot read the vote counts" in data.rejected["1002_WSI_SAD_XX"]


def test_a_mirror_without_the_vote_table_has_no_soft_labels(root):
    (root / "processedResults" / "tabulatedVotes.csv").unlink()
    data = prepare(root)["all"]
    assert "utt2dist" not in data and len(data) == 3


def test_a_root_without_audio_names_the_variable(tmp_path):
    with pytest.raises(CorpusError, match=r"CREMA_D=.*found no \*\*/AudioWAV"):
        prepare(tmp_path)
