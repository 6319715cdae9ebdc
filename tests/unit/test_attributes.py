"""Stage 2 attributes: pitch, loudness, speaking rate and their μ±σ bins."""
from __future__ import annotations

import dataclasses
import json
import math
import subprocess

import numpy as np
import pyloudnorm
import pytest

from local.data.attributes import (
    ATTRIBUTES, LEVELS, STATS_FILE, AttributeSettings, CrepeTracker, PhoneCounter, YinTracker, add_attributes,
    attribute_stats, bin_attributes, count_phones, level, loudness_lufs, phonemise, pitch_summary,
    speech_duration,
)
from local.data.audio import write_wav
from local.data.kaldi import DataDir, format_kv, parse_kv, read_table, validate_data_dir, write_table
from local.utils.hydra import compose

SR = 16000


def harmonic(f0: float, seconds: float, amplitude: float = 0.3) -> np.ndarray:
    """A voice-like periodic signal: five harmonics with 1/k amplitudes."""
    t = np.arange(int(seconds * SR)) / SR
    wav = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    return (amplitude * wav / np.abs(wav).max()).astype(np.float32)


@pytest.fixture(scope="module")
def settings() -> AttributeSettings:
    return AttributeSettings.from_cfg(compose([]).attributes)


# --- pitch ---------------------------------------------------------------------

@pytest.mark.parametrize("f0", [120.0, 220.0])
def test_yin_finds_f0_of_harmonic_signal(f0):
    hz, voiced = YinTracker()(harmonic(f0, 1.0), SR)
    mean, _ = pitch_summary(hz, voiced)
    assert voiced.mean() > 0.95
    assert mean == pytest.approx(f0, rel=0.02)


@pytest.mark.parametrize("f0", [120.0, 220.0])
def test_crepe_finds_f0_of_harmonic_signal(f0):
    tracker = CrepeTracker(model="tiny")  # the packaged weights: loads offline
    hz, voiced = tracker(harmonic(f0, 0.3), SR)
    assert voiced.mean() > 0.8
    assert pitch_summary(hz, voiced)[0] == pytest.approx(f0, rel=0.02)


@pytest.mark.parametrize("tracker", [YinTracker(), CrepeTracker(model="tiny")], ids=["yin", "crepe"])
def test_silence_then_tone_is_unvoiced_then_voiced(tracker):
    wav = np.concatenate([np.zeros(SR // 2, np.float32), harmonic(150.0, 0.5)])
    hz, voiced = tracker(wav, SR)
    assert len(hz) == len(voiced) == 1 + len(wav) // 160
    assert not voiced[:45].any()          # frames centred before 0.45 s: silence
    assert voiced[55:-3].mean() > 0.9     # inside the tone
    assert np.all(hz[~voiced] == 0)


def test_yin_noise_is_unvoiced():
    noise = 0.1 * np.random.default_rng(0).standard_normal(SR).astype(np.float32)
    _, voiced = YinTracker()(noise, SR)
    assert voiced.mean() < 0.02


def test_pitch_range_in_semitones_ignores_octave_errors():
    # a glide over one octave in equal semitone steps: p5 = 0.6 st, p95 = 11.4 st above 100 Hz
    f0 = 100 * 2 ** (np.linspace(0, 12, 101) / 12)
    mean, span = pitch_summary(f0, np.ones_like(f0, bool))
    assert span == pytest.approx(10.8)
    assert mean == pytest.approx(f0.mean())
    # 3 % octave jumps of a flat 150 Hz voice leave the range at 0
    flat = np.full(100, 150.0)
    flat[[10, 50, 90]] = 300.0
    assert pitch_summary(flat, np.ones(100, bool))[1] == pytest.approx(0.0)


def test_too_few_voiced_frames_is_nan():
    voiced = np.zeros(50, bool)
    voiced[:2] = True
    assert all(math.isnan(v) for v in pitch_summary(np.full(50, 120.0), voiced, min_voiced=3))
    assert all(math.isnan(v) for v in pitch_summary(np.zeros(50), np.zeros(50, bool)))


# --- loudness ------------------------------------------------------------------

def test_lufs_matches_pyloudnorm_and_bs1770_reference():
    rng = np.random.default_rng(1)
    wav = harmonic(200.0, 3.0) + 0.05 * rng.standard_normal(3 * SR).astype(np.float32)
    reference = pyloudnorm.Meter(SR).integrated_loudness(wav.astype(np.float64))
    assert loudness_lufs(wav, SR) == pytest.approx(reference)
    # BS.1770: a 0 dBFS sine near 1 kHz reads -3.01 LUFS (BS.2217 allows ±0.1)
    sine = np.sin(2 * np.pi * 997 * np.arange(3 * SR) / SR)
    assert loudness_lufs(sine, SR) == pytest.approx(-3.01, abs=0.1)


def test_lufs_of_clip_shorter_than_gating_block_is_finite_and_consistent():
    long = harmonic(200.0, 2.0)
    short = long[: int(0.2 * SR)]
    value = loudness_lufs(short, SR)
    assert math.isfinite(value)
    assert value == pytest.approx(loudness_lufs(long, SR), abs=0.5)  # same stationary signal


def test_silence_is_minus_infinity():
    assert loudness_lufs(np.zeros(SR, np.float32), SR) == -math.inf
    assert loudness_lufs(np.zeros(SR // 10, np.float32), SR) == -math.inf
    assert loudness_lufs(harmonic(200.0, 1.0, amplitude=1e-5), SR) == -math.inf  # below the -70 LUFS gate


# --- speaking rate -------------------------------------------------------------

def test_trim_removes_leading_and_trailing_silence_only():
    rng = np.random.default_rng(2)
    hiss = lambda n: 1e-4 * rng.standard_normal(n).astype(np.float32)  # -80 dBFS, far below the tone
    wav = np.concatenate([hiss(SR // 2), harmonic(150.0, 0.4), np.zeros(SR // 5, np.float32),
                          harmonic(150.0, 0.4), hiss(SR // 4)])
    assert speech_duration(wav, SR, 160, 40.0) == pytest.approx(1.0, abs=0.03)  # tone + inner pause
    assert speech_duration(np.zeros(SR, np.float32), SR, 160, 40.0) == 0.0


def test_count_phones_rule():
    assert count_phones("h_ə_l_ˈoʊ w_ˈɜː_l_d") == 8
    assert count_phones("(en)h_ə_l_ˈoʊ(cmn) n_ˈiɜ_ χ_ˈɑu2_") == 8  # language flags and tones add nothing
    assert count_phones("s_ˈeɪ__ h_ˈaɪ____") == 4                # empty tokens from quotes
    assert count_phones("") == 0


def test_phone_counts_of_known_words():
    counts = PhoneCounter({"en": "en-us", "cmn": "cmn-latn-pinyin"}).count(
        [("en", "hello"), ("en", "cat"), ("en", "judge"), ("en", "thought"), ("en", ""),
         ("cmn", "你好"), ("cmn", "妈妈")])
    assert counts == {("en", "hello"): 4,     # h ə l oʊ
                      ("en", "cat"): 3,       # k æ t
                      ("en", "judge"): 3,     # dʒ ʌ dʒ
                      ("en", "thought"): 3,   # θ ɔː t
                      ("en", ""): 0,
                      ("cmn", "你好"): 4,     # ni3 hao3: n i x au
                      ("cmn", "妈妈"): 4}     # ma1 ma1


def test_one_espeak_run_equals_one_run_per_text():
    texts = ["Hello, world! How are you?", "", "I have 23 apples; do you", "Say \"hi\" (now)", "the end"]
    batched = phonemise(texts, "en-us")
    alone = [" ".join(subprocess.run(["espeak-ng", "-q", "--ipa", "--sep=_", "-v", "en-us", t],
                                     capture_output=True, text=True, check=True).stdout.split("\n")).strip()
             for t in texts]
    assert [count_phones(p) for p in batched] == [count_phones(p) for p in alone]
    assert count_phones(batched[0]) == 13


# --- binning -------------------------------------------------------------------

def test_levels_against_hand_computation():
    rows = [{"f0_hz": v, "f0_range_st": v, "lufs": v, "phones_per_sec": v}
            for v in (1.0, 2.0, 3.0, 4.0, 10.0)]
    stats = attribute_stats(rows)
    # μ = 4, σ = sqrt((9 + 4 + 1 + 0 + 36) / 5) = sqrt(10)
    assert stats["pitch"]["mean"] == pytest.approx(4.0)
    assert stats["pitch"]["std"] == pytest.approx(math.sqrt(10))
    lo, hi = 4 - math.sqrt(10), 4 + math.sqrt(10)  # 0.838, 7.162
    assert [level(v, 4.0, math.sqrt(10)) for v in (0.5, 1.0, 7.0, 7.5)] == ["Low", "Medium", "Medium", "High"]
    assert level(lo, 4.0, math.sqrt(10)) == "Medium" and level(hi, 4.0, math.sqrt(10)) == "Medium"
    assert level(-math.inf, 4.0, 1.0) == "Low"
    with pytest.raises(ValueError, match="NaN"):
        level(math.nan, 4.0, 1.0)


def test_stats_ignore_silent_loudness():
    rows = [{"f0_hz": 100.0, "f0_range_st": 2.0, "lufs": lufs, "phones_per_sec": 10.0}
            for lufs in (-20.0, -30.0, -math.inf)]
    stats = attribute_stats(rows)
    assert stats["loudness"] == {"value": "lufs", "mean": -25.0, "std": 5.0, "n": 2}
    fields = bin_attributes(rows[2], stats)
    assert fields["loudness"] == "Low" and fields["pitch"] == "Medium"


# --- the stage -----------------------------------------------------------------

def write_data_dir(path, utts: dict[str, tuple[np.ndarray | str, str, str]]) -> None:
    """utt -> (waveform or wav path, text, lang); speaker = the id's prefix before '-'."""
    path.mkdir(parents=True)
    wav_scp = {}
    for utt, (audio, _, _) in utts.items():
        if isinstance(audio, str):
            wav_scp[utt] = audio
        else:
            wav_scp[utt] = str(path / f"{utt}.wav")
            write_wav(wav_scp[utt], audio)
    tables = {"wav.scp": wav_scp, "utt2spk": {u: u.split("-")[0] for u in utts},
              "text": {u: text for u, (_, text, _) in utts.items()},
              "utt2lang": {u: lang for u, (_, _, lang) in utts.items()}}
    for name, table in tables.items():
        write_table(path / name, table)
    DataDir.load(path).save(path)  # writes spk2utt


def test_stats_come_from_train_only(tmp_path, settings):
    train = {f"s1-{i}": (harmonic(f0, 1.0, amplitude=a), "hello there", "en")
             for i, (f0, a) in enumerate([(100, 0.1), (110, 0.2), (120, 0.3), (130, 0.2), (140, 0.1)])}
    dev = {"s2-hi": (harmonic(300.0, 1.0, amplitude=0.2), "hello there", "en"),    # far above train's F0
           "s2-lo": (harmonic(125.0, 1.0, amplitude=0.005), "hello there", "en"),  # far quieter than train
           "s2-fr": (harmonic(125.0, 1.0), "bonjour", "fr"),                       # no voice configured
           "s2-gone": (str(tmp_path / "missing.wav"), "hello there", "en")}        # unreadable audio
    write_data_dir(tmp_path / "train", train)
    write_data_dir(tmp_path / "dev", dev)
    add_attributes(tmp_path, "train", ["dev"], settings)
    stats = json.loads((tmp_path / "train" / STATS_FILE).read_text())["attributes"]
    assert stats["pitch"]["mean"] == pytest.approx(120.0, rel=0.01)
    assert stats["pitch"]["std"] == pytest.approx(math.sqrt(200), rel=0.05)
    assert not (tmp_path / "dev" / STATS_FILE).exists()
    dev_attr = {u: parse_kv(v) for u, v in read_table(tmp_path / "dev" / "utt2attr").items()}
    assert dev_attr["s2-hi"]["pitch"] == "High"
    assert dev_attr["s2-lo"]["pitch"] == "Medium"
    assert dev_attr["s2-lo"]["loudness"] == "Low"
    rejected = DataDir.load(tmp_path / "dev").rejected
    assert "no espeak-ng voice for language 'fr'" in rejected["s2-fr"]
    assert "audio file not found" in rejected["s2-gone"]
    assert sorted(dev_attr) == ["s2-hi", "s2-lo"]


def test_test_sets_keep_unmeasurable_utterances_as_unknown(tmp_path, settings, caplog):
    train = {f"s1-{i}": (harmonic(f0, 1.0, amplitude=a), "hello there", "en")
             for i, (f0, a) in enumerate([(100, 0.1), (110, 0.2), (120, 0.3), (130, 0.2), (140, 0.1)])}

    def hard_cases(spk: str) -> dict:
        return {f"{spk}-ok": (harmonic(125.0, 1.0), "hello there", "en"),
                f"{spk}-silent": (np.zeros(SR, np.float32), "hello there", "en"),  # no pitch, no rate
                f"{spk}-fr": (harmonic(125.0, 1.0), "bonjour", "fr"),              # no voice: no rate
                f"{spk}-mute": (harmonic(125.0, 1.0), "", "en"),                   # empty transcript
                f"{spk}-gone": (str(tmp_path / "missing.wav"), "hello there", "en")}
    write_data_dir(tmp_path / "train", train)
    write_data_dir(tmp_path / "dev", hard_cases("s2"))
    write_data_dir(tmp_path / "eval", hard_cases("s3"))
    summaries = add_attributes(tmp_path, "train", ["dev"], settings, test_sets=["eval"])

    dev = DataDir.load(tmp_path / "dev")
    assert dev.utts == ["s2-ok"] and list(dev["utt2attr"]) == ["s2-ok"]
    assert "pitch unmeasurable" in dev.rejected["s2-silent"]
    assert "no espeak-ng voice for language 'fr'" in dev.rejected["s2-fr"]
    assert "the transcript has no phones" in dev.rejected["s2-mute"]

    test = validate_data_dir(tmp_path / "eval")
    assert test.utts == ["s3-fr", "s3-mute", "s3-ok", "s3-silent"]  # every one but the unreadable
    assert "audio file not found" in test.rejected["s3-gone"] and len(test.rejected) == 1
    attr = test["utt2attr"]
    assert sorted(attr) == test.utts
    assert attr["s3-silent"] == ("pitch=unknown pitch_range=unknown loudness=Low rate=unknown "
                                 "f0_hz=nan f0_range_st=nan lufs=-inf phones_per_sec=nan")
    for utt in ("s3-fr", "s3-mute"):
        fields = parse_kv(attr[utt])
        assert fields["rate"] == "unknown" and fields["phones_per_sec"] == "nan"
        assert fields["pitch"] == "Medium" and float(fields["f0_hz"]) == pytest.approx(125.0, rel=0.02)
    assert {parse_kv(attr["s3-ok"])[a] for a in ATTRIBUTES} <= set(LEVELS)
    assert parse_kv(attr["s3-ok"]) == parse_kv(dev["utt2attr"]["s2-ok"])  # same audio, same line

    assert summaries["eval"].unmeasured == 3 and summaries["eval"].rejected == 1
    assert summaries["eval"].levels["rate"]["unknown"] == 3
    assert summaries["dev"].unmeasured == 0 and summaries["dev"].rejected == 4
    assert "3 kept with unmeasured attributes" in str(summaries["eval"])
    assert "s3-fr: kept with unmeasured attributes" in caplog.text
    with pytest.raises(ValueError, match="'train' is the train set"):
        add_attributes(tmp_path, "train", [], settings, test_sets=["train"])


def test_entry_point_keeps_unmeasurable_in_test_sets_only(tmp_path):
    from local.bin.attributes import main

    train = {f"a-{i}": (harmonic(f0, 1.0), "hello there", "en") for i, f0 in enumerate([100, 120, 140])}
    silent = {"b-1": (harmonic(120.0, 1.0), "hello there", "en"), "b-2": (np.zeros(SR, np.float32), "hi", "en")}
    for name, utts in (("train", train), ("dev", silent), ("test", silent)):
        write_data_dir(tmp_path / "data" / name, utts)
    main(compose([f"data_root={tmp_path / 'data'}", "train_set=train", "dev_set=dev", "test_sets=[test]", "nj=1"]))
    assert sorted(DataDir.load(tmp_path / "data" / "dev")["utt2attr"]) == ["b-1"]
    test = DataDir.load(tmp_path / "data" / "test")
    assert sorted(test["utt2attr"]) == ["b-1", "b-2"] and parse_kv(test["utt2attr"]["b-2"])["pitch"] == "unknown"


def test_bin_attributes_marks_nan_unknown():
    stats = attribute_stats([{"f0_hz": v, "f0_range_st": v, "lufs": v, "phones_per_sec": v} for v in (1.0, 3.0)])
    fields = bin_attributes({"f0_hz": math.nan, "f0_range_st": 2.0, "lufs": -math.inf, "phones_per_sec": 9.0},
                            stats)
    assert [fields[a] for a in ATTRIBUTES] == ["unknown", "Medium", "Low", "High"]
    assert parse_kv(format_kv(fields))["f0_hz"] == "nan" and math.isnan(fields["f0_hz"])


def test_segments_are_measured_separately(tmp_path, settings):
    path = tmp_path / "seg"
    path.mkdir()
    write_wav(path / "rec.wav", np.concatenate([harmonic(120.0, 1.0), harmonic(240.0, 1.0)]))
    write_table(path / "wav.scp", {"rec": str(path / "rec.wav")})
    write_table(path / "segments", {"s-1": "rec 0.0 1.0", "s-2": "rec 1.0 2.0"})
    write_table(path / "utt2spk", {"s-1": "s", "s-2": "s"})
    write_table(path / "text", {"s-1": "one", "s-2": "two"})
    add_attributes(tmp_path, "seg", [], settings)
    f0 = {u: float(parse_kv(v)["f0_hz"]) for u, v in read_table(path / "utt2attr").items()}
    assert f0["s-1"] == pytest.approx(120.0, rel=0.02) and f0["s-2"] == pytest.approx(240.0, rel=0.02)


def spoken(wavs, utt: str, text: str, lang: str = "en", pitch: int = 50, speed: int = 175,
           amplitude: int = 100) -> tuple[str, str, str]:
    """(wav path, text, lang) of espeak-ng speech; Mandarin is spoken from its pinyin."""
    from local.data.synth import to_pinyin

    voice, said = ("cmn-latn-pinyin", to_pinyin(text)) if lang == "cmn" else ("en-us", text)
    path = wavs / f"{utt}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "-a", str(amplitude),
                    "-w", str(path), said], check=True)
    return str(path), text, lang


def test_stage_end_to_end(tmp_path):
    from local.bin.attributes import main

    wavs = tmp_path / "wavs"
    wavs.mkdir()
    train = {
        "a-1": spoken(wavs, "a-1", "The weather is lovely today.", pitch=30, speed=140),
        "a-2": spoken(wavs, "a-2", "I cannot believe you did that.", pitch=50, speed=175),
        "a-3": spoken(wavs, "a-3", "Please close the door.", pitch=70, speed=220, amplitude=40),
        "a-4": spoken(wavs, "a-4", "今天天气很好", lang="cmn", pitch=50, speed=160),
        "a-5": (np.zeros(SR, np.float32), "Nothing to hear.", "en"),  # silence: rejected
    }
    dev = {"b-1": spoken(wavs, "b-1", "Where are you going?", pitch=99, speed=320)}
    test = {"c-1": spoken(wavs, "c-1", "See you tomorrow.", pitch=40, speed=160)}
    for name, utts in (("train", train), ("dev", dev), ("test", test)):
        write_data_dir(tmp_path / "data" / name, utts)

    overrides = [f"data_root={tmp_path / 'data'}", "train_set=train", "dev_set=dev", "test_sets=[test]"]
    main(compose(overrides + ["nj=1"]))
    outputs = {}
    for name in ("train", "dev", "test"):
        data = validate_data_dir(tmp_path / "data" / name)
        outputs[name] = (tmp_path / "data" / name / "utt2attr").read_text()
        for fields in map(parse_kv, data["utt2attr"].values()):
            assert list(fields) == ["pitch", "pitch_range", "loudness", "rate",
                                    "f0_hz", "f0_range_st", "lufs", "phones_per_sec"]
            assert {fields[attr] for attr in ATTRIBUTES} <= set(LEVELS)
    train_dir = DataDir.load(tmp_path / "data" / "train")
    assert sorted(train_dir["utt2attr"]) == ["a-1", "a-2", "a-3", "a-4"]
    assert "pitch unmeasurable" in train_dir.rejected["a-5"]
    assert "a-5" not in train_dir["wav.scp"]

    stats = json.loads((tmp_path / "data" / "train" / STATS_FILE).read_text())
    assert stats["train_set"] == "train" and stats["pitch_backend"] == "yin"
    train_values = [parse_kv(v) for v in train_dir["utt2attr"].values()]
    for attr, key in ATTRIBUTES.items():
        values = np.array([float(v[key]) for v in train_values])
        assert stats["attributes"][attr]["mean"] == pytest.approx(values.mean(), rel=1e-3)
        assert stats["attributes"][attr]["std"] == pytest.approx(values.std(), rel=1e-2)
    # dev is binned with train's μ and σ
    b1 = parse_kv(DataDir.load(tmp_path / "data" / "dev")["utt2attr"]["b-1"])
    for attr, key in ATTRIBUTES.items():
        s = stats["attributes"][attr]
        assert b1[attr] == level(float(b1[key]), s["mean"], s["std"])
    assert b1["rate"] == "High" and b1["pitch"] == "High"

    # re-runnable, and the same with 2 worker processes
    main(compose(overrides + ["nj=2"]))
    for name in ("train", "dev", "test"):
        assert (tmp_path / "data" / name / "utt2attr").read_text() == outputs[name]
    assert json.loads((tmp_path / "data" / "train" / STATS_FILE).read_text()) == stats


def test_unknown_backend_is_an_error(settings):
    from local.data.attributes import make_tracker

    with pytest.raises(ValueError, match="pitch_backend"):
        make_tracker(dataclasses.replace(settings, pitch_backend="praat"))
