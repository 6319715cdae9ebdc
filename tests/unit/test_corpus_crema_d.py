"""The CREMA-D preparer on a small fake copy of the repository, with its vote table."""
from __future__ import annotations

import numpy as np
import pytest

from local.data.audio import write_wav
from local.data.corpora.crema_d import prepare
from local.data.corpora.files import CorpusError
from local.data.kaldi import parse_dist

HEADER = '"","A","D","F","H","N","S","fileName","numResponses","agreement","emoVote"'
# (row name, A D F H N S, file): 1xxxxx voice only, 2xxxxx face only, 3xxxxx both
VOTES = [
    ("100001", (6, 1, 0, 0, 1, 0), "1001_DFA_ANG_XX"), ("200001", (9, 0, 0, 0, 0, 0), "1001_DFA_ANG_XX"),
    ("300001", (8, 0, 0, 0, 1, 0), "1001_DFA_ANG_XX"),
    ("100002", (0, 0, 0, 3, 6, 0), "1001_IEO_HAP_LO"), ("200002", (0, 0, 0, 9, 0, 0), "1001_IEO_HAP_LO"),
    ("100003", (0, 0, 0, 0, 4, 4), "1002_WSI_SAD_XX"),  # a tie: N:S
    ("100004", (0, 0, 0, 0, 5, 5), "1076_MTI_SAD_XX"),
]


@pytest.fixture
def root(tmp_path):
    base = tmp_path / "CREMA-D"
    (base / "AudioWAV").mkdir(parents=True)
    for *_, name in VOTES:
        write_wav(base / "AudioWAV" / f"{name}.wav", np.zeros(1600, np.float32))
    (base / "AudioWAV" / "._1001_DFA_ANG_XX.wav").write_bytes(b"junk")
    (base / "processedResults").mkdir()
    lines = [HEADER] + [f'"{row}",{",".join(map(str, c))},"{name}",{sum(c)},0.5,"N"' for row, c, name in VOTES]
    (base / "processedResults" / "tabulatedVotes.csv").write_text("\n".join(lines) + "\n")
    return base


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
