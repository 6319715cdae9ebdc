"""LIME-style synthesis: prosody moves the way the literature says, labels are consistent."""
import dataclasses
import importlib.util
import re
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from local.data import synth
from local.data.synth import (EMOTION_PROSODY, EspeakEngine, Rendering, Voice, coloured_noise, lime_subset,
                              mix_at_snr, render, rendering_key, simulate_votes, stable_seed, synthesize_all)
from local.utils.hydra import compose

ROOT = Path(__file__).resolve().parents[2]
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
VOICE = Voice("spk01", {"en": "en-us+m3", "cmn": "cmn-latn-pinyin+m3"})


def load_prepare():
    spec = importlib.util.spec_from_file_location("prepare", ROOT / "egs/mini_lime/prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stable_seed_is_stable():
    assert stable_seed(1, "a") == stable_seed(1, "a") == 3673330623977531562
    assert stable_seed(1, "a") != stable_seed(1, "b")


def test_mix_at_snr_hits_the_snr():
    rng = np.random.default_rng(0)
    speech = rng.standard_normal(16000)
    noise = coloured_noise(16000, rng, 1.0)
    mixed = mix_at_snr(speech, noise, 10.0)
    snr = 10 * np.log10(np.mean(speech ** 2) / np.mean((mixed - speech) ** 2))
    assert snr == pytest.approx(10.0, abs=1e-6)


def test_votes_are_distributions():
    rng = np.random.default_rng(0)
    for _ in range(50):
        dist = simulate_votes("anger", "high", rng)
        assert sum(dist.values()) == pytest.approx(1.0)
        # every share is votes / n for one annotator count n in 3..12
        assert any(all(abs(p * n - round(p * n)) < 1e-9 for p in dist.values()) for n in range(3, 13))
    blended = [simulate_votes("anger", "high", rng, blend=("sadness", 0.45)) for _ in range(300)]
    mean = {e: np.mean([d.get(e, 0) for d in blended]) for e in ("anger", "sadness")}
    assert mean["anger"] == pytest.approx(0.95 * 0.55, abs=0.05)
    assert mean["sadness"] == pytest.approx(0.95 * 0.45, abs=0.05)


def test_subsets():
    assert lime_subset("anger", "anger") == "consistent"
    assert lime_subset("anger", "fear") == "conflict"
    assert lime_subset("neutral", "fear") == "neutral_text"


def measure(wav: np.ndarray) -> tuple[float, float, float]:
    """(median F0 Hz, active duration s, active RMS dB) of a rendering."""
    import librosa

    f0, voiced, _ = librosa.pyin(wav, fmin=60, fmax=500, sr=16000, frame_length=1024, hop_length=320)
    active = np.abs(wav) > 0.05 * np.abs(wav).max()
    rms = 20 * np.log10(np.sqrt(np.mean(wav[active] ** 2)))
    return float(np.nanmedian(f0[voiced])), float(active.sum() / 16000), float(rms)


@needs_espeak
def test_emotions_move_prosody_along_the_literature():
    text = "I never imagined the project would end like this."
    out = {}
    for emotion in ("neutral", "anger", "sadness", "fear"):
        r = Rendering(f"spk01-x-{emotion}", VOICE, text, "en", emotion, "high", seed=1)
        out[emotion] = measure(render(r, EspeakEngine()))
    assert out["anger"][0] > out["neutral"][0] > out["sadness"][0]
    assert out["fear"][0] > out["anger"][0]
    assert out["sadness"][1] > out["neutral"][1] > out["anger"][1]   # slower, faster
    assert out["anger"][2] > out["neutral"][2] + 6 > out["sadness"][2] + 6  # louder, softer (dB)
    assert np.isclose(EMOTION_PROSODY["anger"][3], 2 * EMOTION_PROSODY["happiness"][3])


@needs_espeak
def test_rendering_is_deterministic_and_mandarin_works(tmp_path):
    rs = [Rendering("spk01-a-anger-mid", VOICE, "我从来没有想到。", "cmn", "anger", "mid", seed=5, snr_db=10.0),
          Rendering("spk01-b-fear-low", VOICE, "Hello there.", "en", "fear", "low", seed=6)]
    first = synthesize_all(rs, EspeakEngine(), tmp_path / "a", nj=2, progress=False)
    second = synthesize_all(rs, EspeakEngine(), tmp_path / "b", nj=1, progress=False)
    for utt in first:
        assert Path(first[utt][0]).read_bytes() == Path(second[utt][0]).read_bytes()
        assert first[utt][1] > 0.5
    again = synthesize_all(rs, EspeakEngine(), tmp_path / "a", nj=1, progress=False)  # resumes: no work
    assert again == first


class CountingEngine:
    """A stand-in TTS (a tone that follows the prosody's pitch) that counts its calls."""

    def __init__(self, version: str = "1", sample_rate: int = 16000):
        self.version, self.sample_rate, self.calls = version, sample_rate, 0

    def synthesize(self, text, lang, voice, prosody):
        self.calls += 1
        t = np.arange(int(0.02 * len(text) * 16000)) / 16000
        return (0.1 * np.sin(2 * np.pi * (150 + prosody.pitch_pct) * t)).astype(np.float32)

    def identity(self) -> dict:
        return {"engine": "counting", "version": self.version, "sample_rate": self.sample_rate}


BASE = Rendering("spk01-x-anger-mid", VOICE, "Hello there.", "en", "anger", "mid", seed=5,
                 blend=("sadness", 0.3), snr_db=10.0, noise_exponent=1.0)


def test_an_unchanged_rendering_is_reused_not_synthesised(tmp_path):
    engine = CountingEngine()
    rs = [BASE, dataclasses.replace(BASE, utt="spk01-y-fear-low", emotion="fear", intensity="low", seed=8)]
    first = synthesize_all(rs, engine, tmp_path, progress=False)
    assert engine.calls == 2
    for r in rs:
        path = Path(first[r.utt][0])
        assert path.parent == (tmp_path / "spk01").resolve()
        assert re.fullmatch(rf"{r.utt}-[0-9a-f]{{10}}\.wav", path.name)
        assert path.name == f"{r.utt}-{rendering_key(r, engine)}.wav"
    assert synthesize_all(rs, engine, tmp_path, progress=False) == first and engine.calls == 2
    fresh = CountingEngine()  # another instance, same identity: same files
    assert synthesize_all(rs, fresh, tmp_path, progress=False) == first and fresh.calls == 0


def test_any_changed_setting_gives_a_new_file(tmp_path, monkeypatch):
    voice = dataclasses.replace
    changed = {
        "text": dataclasses.replace(BASE, text="Hello there!"),
        "lang": dataclasses.replace(BASE, lang="cmn"),
        "voice name": dataclasses.replace(BASE, voice=voice(VOICE, voices={**VOICE.voices, "en": "en-gb+m3"})),
        "speaker pitch": dataclasses.replace(BASE, voice=voice(VOICE, pitch_base=51)),
        "speaker speed": dataclasses.replace(BASE, voice=voice(VOICE, speed_wpm=166)),
        "speaker gain": dataclasses.replace(BASE, voice=voice(VOICE, gain_db=0.5)),
        "emotion": dataclasses.replace(BASE, emotion="fear"),
        "intensity": dataclasses.replace(BASE, intensity="high"),
        "blend emotion": dataclasses.replace(BASE, blend=("fear", 0.3)),
        "blend weight": dataclasses.replace(BASE, blend=("sadness", 0.31)),
        "no blend": dataclasses.replace(BASE, blend=None),
        "seed": dataclasses.replace(BASE, seed=6),
        "snr": dataclasses.replace(BASE, snr_db=10.5),
        "clean": dataclasses.replace(BASE, snr_db=None),
        "noise colour": dataclasses.replace(BASE, noise_exponent=2.0),
    }
    engine = CountingEngine()
    base = rendering_key(BASE, engine)
    keys = {name: rendering_key(r, engine) for name, r in changed.items()}
    keys["engine version"] = rendering_key(BASE, CountingEngine(version="2"))
    keys["engine sample rate"] = rendering_key(BASE, CountingEngine(sample_rate=22050))
    with monkeypatch.context() as m:
        m.setattr(synth, "UNITS", (36.0, 55.0, 18.0, 4.0))
        keys["prosody units"] = rendering_key(BASE, engine)
    with monkeypatch.context() as m:
        m.setattr(synth, "RENDER_VERSION", synth.RENDER_VERSION + 1)
        keys["format version"] = rendering_key(BASE, engine)
    assert base not in keys.values() and len(set(keys.values())) == len(keys), keys
    # what the audio does not depend on keeps the key: labels, split, the voice of another language
    same = [dataclasses.replace(BASE, extra={"split": "dev", "dist": {"anger": 1.0}}),
            dataclasses.replace(BASE, voice=voice(VOICE, voices={**VOICE.voices, "cmn": "cmn+f1"}))]
    assert all(rendering_key(r, engine) == base for r in same)

    # a changed yaml on disk: the old file stays, the changed rendering gets a new one and only it is made
    old = synthesize_all([BASE], engine, tmp_path, progress=False)[BASE.utt][0]
    new = synthesize_all([changed["speaker pitch"]], engine, tmp_path, progress=False)[BASE.utt][0]
    assert new != old and Path(old).is_file() and Path(new).is_file() and engine.calls == 2
    assert synthesize_all([BASE], engine, tmp_path, progress=False)[BASE.utt][0] == old and engine.calls == 2


@needs_espeak
def test_espeak_identity_names_its_version():
    identity = EspeakEngine().identity()
    assert identity["version"].startswith("eSpeak NG") and identity["sample_rate"] == 16000


def test_mini_lime_plan_meets_the_corpus_spec():
    prepare = load_prepare()
    cfg = compose(["corpus=mini_lime"], recipe_conf=ROOT / "egs/mini_lime/conf")
    cfg.corpus.texts = str(ROOT / "egs/mini_lime" / cfg.corpus.texts)
    plan = prepare.plan(cfg.corpus)
    assert len(plan) >= 3000
    texts = {r.text: r for r in plan}
    assert len(texts) >= 24 and sum(r.lang == "cmn" for r in texts.values()) >= 4
    renderings = defaultdict(set)
    for r in plan:
        renderings[r.text].add((r.emotion, r.intensity))
    assert all(len(v) == 21 for v in renderings.values())     # 7 emotions × 3 intensities
    by_split = defaultdict(list)
    for r in plan:
        by_split[r.extra["split"]].append(r)
    assert set(by_split) == {"train", "dev", "test"}
    spk = {split: {r.voice.spk for r in rs} for split, rs in by_split.items()}
    txt = {split: {r.text for r in rs} for split, rs in by_split.items()}
    assert len(spk["train"]) >= 6 and len(spk["dev"]) >= 2 and len(spk["test"]) >= 2
    assert not spk["train"] & spk["dev"] and not spk["train"] & spk["test"] and not spk["dev"] & spk["test"]
    heldout = set(texts) - txt["train"]
    assert len(heldout) >= 4
    assert txt["dev"] == txt["test"] == set(texts)   # unseen voices read every text, the heldout ones too
    for split in ("dev", "test"):  # every speaker × every text × every emotion and intensity
        assert len(by_split[split]) == len(spk[split]) * len(texts) * 21
        assert set(Counter(r.extra["subset"] for r in by_split[split])) == {"consistent", "conflict", "neutral_text"}
    assert len(by_split["train"]) == len(spk["train"]) * len(txt["train"]) * 21
    assert len({r.utt for r in plan}) == len(plan)
    assert 0.1 < np.mean([r.blend is not None for r in plan]) < 0.2
    assert 0.1 < np.mean([r.snr_db is not None for r in plan]) < 0.3


def test_mini_lime_split_is_checked():
    prepare = load_prepare()
    cfg = compose(["corpus=mini_lime"], recipe_conf=ROOT / "egs/mini_lime/conf")
    cfg.corpus.texts = str(ROOT / "egs/mini_lime" / cfg.corpus.texts)
    cfg.corpus.speakers.spk09.split = "valid"
    with pytest.raises(ValueError, match="corpus.speakers.spk09.split is 'valid'"):
        prepare.plan(cfg.corpus)
