"""Stage 1 on bad input: each bad utterance is rejected by name, the good ones survive."""
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from local.data.audio import AudioError, read_audio
from local.data.format import format_data_dir
from local.data.kaldi import DataDir, DataDirError, read_table, validate_data_dir
from local.data.labels import load_label_map


def run_format(data_dir: Path, tmp_path: Path, **kw) -> DataDir:
    args = dict(min_dur=0.1, max_dur=20.0, nj=1)
    args.update(kw)
    return format_data_dir(data_dir, data_dir, tmp_path / "audio", load_label_map(None), **args)


def replace_line(path: Path, index: int, line: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[index] = line
    path.write_text("".join(lines))


def wav_of(data_dir: Path, utt: str) -> Path:
    return Path(read_table(data_dir / "wav.scp")[utt])


def test_clean_dir_passes_unchanged(data_dir, tmp_path):
    data = run_format(data_dir, tmp_path)
    assert len(data) == 6 and not data.rejected
    assert read_table(data_dir / "utt2dur")["spk0-utt0"] == "0.500"
    assert not (tmp_path / "audio").exists()  # 16 kHz mono files are used in place


def test_corrupt_empty_and_missing_audio_are_rejected(data_dir, tmp_path):
    wav_of(data_dir, "spk0-utt0").write_bytes(b"RIFF\x00\x00garbage")
    sf.write(wav_of(data_dir, "spk0-utt1"), np.zeros(0, dtype=np.float32), 16000)
    wav_of(data_dir, "spk1-utt0").unlink()
    data = run_format(data_dir, tmp_path)
    assert "unreadable audio" in data.rejected["spk0-utt0"]
    assert data.rejected["spk0-utt1"].startswith("spk0-utt1: empty audio (0 samples)")
    assert data.rejected["spk1-utt0"].startswith("spk1-utt0: audio file not found")
    assert data.utts == ["spk0-utt2", "spk1-utt1", "spk1-utt2"]
    assert set(read_table(data_dir / "rejected")) == {"spk0-utt0", "spk0-utt1", "spk1-utt0"}
    validate_data_dir(data_dir)


def test_non_finite_audio_is_rejected(data_dir, tmp_path):
    sf.write(wav_of(data_dir, "spk0-utt0"), np.array([0.1, np.nan, 0.2] * 8000, dtype=np.float32), 16000,
             subtype="FLOAT")
    with pytest.raises(AudioError, match="spk0-utt0: audio has NaN or inf samples"):
        read_audio(str(wav_of(data_dir, "spk0-utt0")), "spk0-utt0")
    assert "NaN or inf" in run_format(data_dir, tmp_path).rejected["spk0-utt0"]


def test_stereo_44k_is_converted_not_rejected(data_dir, tmp_path):
    t = np.arange(44100) / 44100
    left = 0.5 * np.sin(2 * np.pi * 220 * t)
    path = wav_of(data_dir, "spk1-utt2")
    sf.write(path, np.stack([left, left], axis=1), 44100)
    data = run_format(data_dir, tmp_path)
    assert not data.rejected
    new = data["wav.scp"]["spk1-utt2"]
    assert new == str((tmp_path / "audio" / "spk1-utt2.wav").resolve())
    info = sf.info(new)
    assert (info.samplerate, info.channels) == (16000, 1)
    assert data["utt2dur"]["spk1-utt2"] == "1.000"
    wav, _ = sf.read(new)
    assert abs(np.sqrt(np.mean(wav ** 2)) - 0.5 / np.sqrt(2)) < 0.01  # downmix kept the level


def test_unknown_label_rejected_known_aliases_mapped(data_dir, tmp_path):
    replace_line(data_dir / "utt2emo", 0, "spk0-utt0 bored\n")
    replace_line(data_dir / "utt2emo", 1, "spk0-utt1 exc\n")
    replace_line(data_dir / "utt2dist", 1, "spk0-utt1 exc:0.5 hap:0.25 sad:0.25\n")
    data = run_format(data_dir, tmp_path)
    assert data.rejected == {"spk0-utt0": "unknown label 'bored' in utt2emo"}
    assert data["utt2emo"]["spk0-utt1"] == "happiness"
    assert data["utt2dist"]["spk0-utt1"] == "happiness:0.7500 sadness:0.2500"


def test_unsorted_is_repaired_duplicates_rejected(data_dir, tmp_path):
    lines = (data_dir / "text").read_text().splitlines(keepends=True)
    (data_dir / "text").write_text("".join(reversed(lines)) + "spk1-utt1 said twice\n")
    with pytest.raises(DataDirError, match="text:2: not sorted"):
        validate_data_dir(data_dir)
    data = run_format(data_dir, tmp_path)
    assert data.rejected == {"spk1-utt1": f"{data_dir / 'text'}: duplicate id 'spk1-utt1' on lines 2, 7"}
    assert len(data) == 5
    validate_data_dir(data_dir)


def test_duration_filter(data_dir, tmp_path):
    data = run_format(data_dir, tmp_path, max_dur=0.65)
    assert data.rejected["spk0-utt2"] == "duration 0.70 s is longer than max_dur 0.65 s"
    assert "spk0-utt1" in data.utts  # 0.6 s stays


def test_utterance_missing_from_a_table_is_rejected(data_dir, tmp_path):
    lines = (data_dir / "utt2lang").read_text().splitlines(keepends=True)
    (data_dir / "utt2lang").write_text("".join(lines[1:]))
    data = run_format(data_dir, tmp_path)
    assert data.rejected == {"spk0-utt0": "missing from utt2lang"}


def test_segments_become_files(data_dir, tmp_path):
    (data_dir / "segments").write_text("spk0-utt0 spk0-utt0 0.1 0.3\n")
    for name in ("wav.scp", "utt2spk", "text", "utt2emo", "utt2dist", "utt2lang"):
        (data_dir / name).write_text((data_dir / name).read_text().splitlines(keepends=True)[0])
    (data_dir / "spk2utt").unlink()
    data = run_format(data_dir, tmp_path)
    assert data["utt2dur"] == {"spk0-utt0": "0.200"}
    assert not (data_dir / "segments").exists()


def test_nothing_left_is_an_error(data_dir, tmp_path):
    with pytest.raises(DataDirError, match="no utterance survived"):
        run_format(data_dir, tmp_path, min_dur=5.0)
