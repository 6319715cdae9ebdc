"""The EmoDB preparer on a small fake copy of the official zip."""
from __future__ import annotations

import numpy as np
import pytest
from helpers.fake_emodb import build

from local.data.audio import write_wav
from local.data.corpora.emodb import prepare
from local.data.corpora.files import CorpusError


@pytest.fixture
def root(tmp_path):
    return build(tmp_path)


def test_fields_from_the_file_names(root):
    data = prepare(root)["all"]
    assert data["utt2spk"] == {"03a01Fa": "03", "08b01Lb": "08", "16a01Ec": "16"}
    assert data["utt2emo"] == {"03a01Fa": "happiness", "08b01Lb": "boredom", "16a01Ec": "disgust"}
    assert data["text"]["08b01Lb"] == "Was sind denn das für Tüten, die da unter dem Tisch stehen?"
    assert set(data["utt2lang"].values()) == {"de"} and not data.rejected


def test_bad_names_and_a_second_copy_are_rejected_with_reasons(root):
    write_wav(root / "wav" / "03a01Xa.wav", np.zeros(160, np.float32))
    write_wav(root / "wav" / "99a01Wa.wav", np.zeros(160, np.float32))
    (root / "wav_corpus").mkdir()
    write_wav(root / "wav_corpus" / "16a01Ec.wav", np.zeros(160, np.float32))
    data = prepare(root)["all"]
    assert data.utts == ["03a01Fa", "08b01Lb"]
    assert data.rejected["03a01Xa"].endswith("unknown emotion letter X in the file name")
    assert data.rejected["99a01Wa"].endswith("unknown speaker 99 in the file name")
    assert "a second copy of 16a01Ec" in data.rejected["16a01Ec"]


def test_a_root_without_emodb_files_names_the_variable(tmp_path):
    with pytest.raises(CorpusError, match="EMODB=.*no such directory"):
        prepare(tmp_path / "missing")
