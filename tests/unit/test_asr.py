"""Stage 1's transcripts for a corpus without them (format.asr): a tiny random Whisper stands in for a real one."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import make_data_dir
from helpers.tiny_whisper import build

from local.data.asr import transcribe
from local.data.audio import read_audio
from local.data.kaldi import DataDir


@pytest.fixture(scope="module")
def whisper(tmp_path_factory):
    return build(tmp_path_factory.mktemp("asr") / "whisper")


def test_one_transcript_per_wave_whatever_the_batch_and_length(whisper):
    t = np.arange(16000) / 16000
    waves = [np.sin(2 * np.pi * 220 * t).astype(np.float32), 0.1 * np.sin(2 * np.pi * 90 * t[:9000]).astype(np.float32),
             np.tile(np.sin(2 * np.pi * 150 * t).astype(np.float32), 31)]  # 31 s: chunked
    batched = transcribe(waves, str(whisper), batch_size=3, max_new_tokens=5)
    alone = [transcribe([w], str(whisper), batch_size=1, max_new_tokens=5)[0] for w in waves]
    assert batched == alone and len(batched) == 3 and all(batched)


def test_stage_1_writes_the_transcripts_of_a_corpus_that_has_none(whisper, tmp_path):
    from local.bin.format import main
    from local.bin.stages import STAGES
    from local.utils.hydra import compose

    root = tmp_path / "data"
    root.mkdir()
    make_data_dir(tmp_path / "t").rename(root / "t")
    (root / "t" / "text").unlink()
    args = [f"data_root={root}", f"dump_root={tmp_path / 'dump'}", "train_set=t", "dev_set=t", "test_sets=[]", "nj=1"]
    cfg = compose([*args, f"format.asr.model={whisper}", "format.asr.max_new_tokens=4"])
    main(cfg)
    data = DataDir.load(root / "t")
    waves = [read_audio(data["wav.scp"][u], u) for u in data.utts]
    assert data["text"] == dict(zip(data.utts, transcribe(waves, str(whisper), max_new_tokens=4))) and len(data) == 6
    assert STAGES["format"].inputs(cfg)["asr"] == str(whisper)  # its content is an input: another model re-runs it
    (root / "t" / "text").unlink()
    main(compose(args))  # no model: no transcripts, and stage 2 will say what to do
    assert "text" not in DataDir.load(root / "t")
