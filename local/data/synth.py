"""LIME-style synthetic emotional speech: one text, every emotion, several intensities.

CogAudio-LLM's LIME data renders each text in several emotions so that the words
cannot give the label away; only prosody can.  This module does the same with a
rule-based TTS, so the corpus builds offline in a minute and every claim of the
papers ("the text-only cascade fails on conflict utterances") can be checked on
a laptop.  Emotion is carried by prosody along the directions reported by
Banse & Scherer (1996) and Scherer (2003) (see ``EMOTION_PROSODY``), scaled by
intensity, with per-utterance jitter so that classes overlap as in real speech.

TTS engines plug in behind :class:`TTSEngine`; espeak-ng is the first.

Audio files are named by a hash of everything their rendering depends on
(:func:`rendering_key`): a changed corpus yaml (a speaker's pitch, the noise,
the blends, the texts) or another espeak-ng gives new files and a new wav.scp,
instead of silently reusing audio made for other settings; an unchanged
rendering finds its file and is not synthesised again.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import subprocess
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import soundfile as sf
import soxr
from tqdm import tqdm

from local.data.audio import SAMPLE_RATE, write_wav
from local.data.labels import EMOTIONS

log = logging.getLogger(__name__)

# Direction of each emotion relative to the speaker's neutral voice, in units of
# UNITS below: (F0 level, F0 range, speaking rate, loudness).
#   anger: F0 ↑, range ↑, rate ↑, loudness ↑↑      happiness: F0 ↑, range ↑↑, rate ↑, loudness ↑
#   sadness: F0 ↓, range ↓, rate ↓, loudness ↓     fear: F0 ↑↑, range ↓, rate ↑, loudness ↓
#   surprise: F0 ↑↑, range ↑↑, rate =, loudness =  disgust: F0 ↓, range ↓, rate ↓, loudness =
EMOTION_PROSODY = {
    "neutral":   (0.0, 0.0, 0.0, 0.0),
    "anger":     (1.0, 1.0, 1.0, 2.0),
    "happiness": (1.0, 2.0, 1.0, 1.0),
    "sadness":   (-1.0, -1.0, -1.0, -1.0),
    "fear":      (2.0, -1.0, 1.0, -1.0),
    "surprise":  (2.0, 2.0, 0.0, 0.0),
    "disgust":   (-1.0, -1.0, -1.0, 0.0),
}
# One unit: espeak-ng SSML percentages for pitch/range/rate, dB for loudness.
# espeak's pitch percentage moves F0 by roughly half as much in Hz.
UNITS = (35.0, 55.0, 18.0, 4.0)
INTENSITY_SCALE = {"low": 0.5, "mid": 1.0, "high": 1.6}
INTENSITIES = tuple(INTENSITY_SCALE)
REFERENCE_RMS = 0.05  # active-speech RMS of a neutral rendering (about -26 dBFS)
PROSODY_JITTER = 0.25  # per-utterance spread of the prosody, in UNITS
PAD_S = 0.15           # silence added on each side of a rendering, as a recording would have
# Bump when render() or an engine changes what it makes in a way rendering_key cannot see (new code,
# not new settings): every file is then synthesised anew.
RENDER_VERSION = 1
KEY_CHARS = 10  # hex digits of the rendering hash in a file name


def stable_seed(*parts: object) -> int:
    """A seed from names, identical across processes and Python runs (unlike hash())."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


@dataclass(frozen=True)
class Prosody:
    """Changes relative to the speaker's neutral voice."""

    pitch_pct: float = 0.0
    range_pct: float = 0.0
    rate_pct: float = 0.0
    gain_db: float = 0.0


def emotion_prosody(emotion: str, intensity: str, rng: np.random.Generator,
                    blend: tuple[str, float] | None = None, jitter: float = PROSODY_JITTER) -> Prosody:
    """Prosody of one rendering; ``blend=(other, w)`` interpolates towards another emotion."""
    direction = np.asarray(EMOTION_PROSODY[emotion])
    if blend is not None:
        other, w = blend
        direction = (1 - w) * direction + w * np.asarray(EMOTION_PROSODY[other])
    units = direction * INTENSITY_SCALE[intensity] + rng.normal(0.0, jitter, size=4)
    p, r, s, g = units * np.asarray(UNITS)
    # espeak rejects a range or rate of -100% or less; keep every voice intelligible.
    return Prosody(pitch_pct=float(max(p, -60)), range_pct=float(max(r, -90)),
                   rate_pct=float(np.clip(s, -50, 80)), gain_db=float(g))


@dataclass(frozen=True)
class Voice:
    """A simulated speaker: one espeak variant speaking every language."""

    spk: str
    voices: dict  # lang -> espeak voice name, e.g. {"en": "en-us+m3", "cmn": "cmn-latn-pinyin+m3"}
    pitch_base: int = 50      # espeak -p (0..99)
    speed_wpm: int = 165      # espeak -s
    gain_db: float = 0.0


class TTSEngine(Protocol):
    """Anything that turns text + voice + prosody into 16 kHz mono float32 audio.

    ``identity()`` names the engine and every setting its output depends on
    (version, sample rate ...) as JSON-able values: it is part of each file's
    rendering hash, so another engine or version never reuses this one's audio.
    """

    def synthesize(self, text: str, lang: str, voice: Voice, prosody: Prosody) -> np.ndarray: ...

    def identity(self) -> dict: ...


def to_pinyin(text: str) -> str:
    """Hanzi -> tone-numbered pinyin: espeak-ng's Debian build reads pinyin, not Hanzi."""
    from pypinyin import Style, lazy_pinyin

    syllables = lazy_pinyin(text, style=Style.TONE3, neutral_tone_with_five=True)
    out = " ".join(syllables)
    for zh, en in (("，", ","), ("。", "."), ("？", "?"), ("！", "!"), ("、", ","), ("：", ":")):
        out = out.replace(zh, en)
    return out


@functools.lru_cache(maxsize=None)
def espeak_version(binary: str = "espeak-ng") -> str:
    """``espeak-ng --version`` (version and data path): another build or voice data may sound different."""
    try:
        proc = subprocess.run([binary, "--version"], capture_output=True, text=True)
    except FileNotFoundError:
        raise RuntimeError(f"{binary} is not installed (tools/install.sh installs espeak-ng)") from None
    if proc.returncode != 0:
        raise RuntimeError(f"{binary} --version failed ({proc.returncode}): {proc.stderr.strip()[:200]}")
    return " ".join(proc.stdout.split())


@dataclass
class EspeakEngine:
    """espeak-ng through its CLI with SSML <prosody>; one process per utterance (~20 ms)."""

    binary: str = "espeak-ng"
    sample_rate: int = SAMPLE_RATE

    def identity(self) -> dict:
        from importlib.metadata import version

        return {"engine": "espeak-ng", "version": espeak_version(self.binary), "sample_rate": self.sample_rate,
                "reference_rms": REFERENCE_RMS, "pypinyin": version("pypinyin"), "soxr": version("soxr")}

    def synthesize(self, text: str, lang: str, voice: Voice, prosody: Prosody) -> np.ndarray:
        spoken = to_pinyin(text) if lang == "cmn" else text
        spoken = spoken.replace("&", " and ").replace("<", " ").replace(">", " ")
        ssml = (f'<speak><prosody pitch="{prosody.pitch_pct:+.0f}%" range="{prosody.range_pct:+.0f}%" '
                f'rate="{prosody.rate_pct:+.0f}%">{spoken}</prosody></speak>')
        cmd = [self.binary, "-v", voice.voices[lang], "-p", str(voice.pitch_base),
               "-s", str(voice.speed_wpm), "-m", "--stdout", ssml]
        proc = subprocess.run(cmd, capture_output=True)
        if proc.returncode != 0 or not proc.stdout:
            raise RuntimeError(f"espeak-ng failed for voice {voice.voices[lang]}: {proc.stderr.decode()[:200]}")
        wav, sr = sf.read(io.BytesIO(proc.stdout), dtype="float32")
        wav = soxr.resample(wav, sr, self.sample_rate).astype(np.float32)
        # espeak voices differ in level; start every utterance from the same
        # active-speech RMS so that loudness carries the emotion, not the voice.
        active = wav[np.abs(wav) > 0.02 * np.abs(wav).max()]
        wav = wav * np.float32(REFERENCE_RMS / (np.sqrt(np.mean(active ** 2)) + 1e-9))
        return wav * np.float32(10 ** ((prosody.gain_db + voice.gain_db) / 20))


def coloured_noise(n: int, rng: np.random.Generator, exponent: float) -> np.ndarray:
    """Noise with power ∝ 1/f^exponent (0 white, 1 pink, 2 brown), unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1] if n > 1 else 1.0
    noise = np.fft.irfft(spectrum / freqs ** (exponent / 2), n)
    return noise / (np.sqrt(np.mean(noise ** 2)) + 1e-12)


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """Add noise so that 10·log10(P_speech / P_noise) equals ``snr_db``."""
    p_speech = np.mean(speech ** 2)
    p_noise = np.mean(noise ** 2) + 1e-12
    return speech + noise * np.sqrt(p_speech / (p_noise * 10 ** (snr_db / 10)))


def simulate_votes(emotion: str, intensity: str, rng: np.random.Generator,
                   blend: tuple[str, float] | None = None,
                   n_range: tuple[int, int] = (3, 12)) -> dict[str, float]:
    """Soft label from simulated annotators, as IEMOCAP / CREMA-D aggregate votes.

    Annotators agree more on intense renderings; the ones who miss mostly hear
    "neutral".  A blended rendering splits the votes between its two emotions.
    """
    hit = {"low": 0.70, "mid": 0.85, "high": 0.95}[intensity]
    p = np.zeros(len(EMOTIONS))
    if blend is None:
        p[EMOTIONS.index(emotion)] = hit
    else:
        other, w = blend
        p[EMOTIONS.index(emotion)] += hit * (1 - w)
        p[EMOTIONS.index(other)] += hit * w
    miss = 1 - hit
    neutral = EMOTIONS.index("neutral")
    if emotion != "neutral":
        p[neutral] += miss / 2
        miss /= 2
    p += miss / len(EMOTIONS)
    n = int(rng.integers(n_range[0], n_range[1] + 1))
    votes = rng.multinomial(n, p / p.sum())
    return {e: v / n for e, v in zip(EMOTIONS, votes) if v}


@dataclass(frozen=True)
class Rendering:
    """One utterance to synthesise, with everything needed to label it."""

    utt: str
    voice: Voice
    text: str
    lang: str
    emotion: str
    intensity: str
    seed: int
    blend: tuple[str, float] | None = None
    snr_db: float | None = None         # None: clean
    noise_exponent: float = 0.0
    extra: dict = field(default_factory=dict)


def render(r: Rendering, engine: TTSEngine) -> np.ndarray:
    """Synthesise one rendering deterministically (its own seeded RNG)."""
    rng = np.random.default_rng(r.seed)
    prosody = emotion_prosody(r.emotion, r.intensity, rng, blend=r.blend)
    wav = engine.synthesize(r.text, r.lang, r.voice, prosody)
    pad = np.zeros(int(PAD_S * SAMPLE_RATE), dtype=np.float32)
    wav = np.concatenate([pad, wav, pad])
    if r.snr_db is not None:
        wav = mix_at_snr(wav, coloured_noise(len(wav), rng, r.noise_exponent), r.snr_db)
    return np.clip(wav, -0.99, 0.99).astype(np.float32)


def lime_subset(lean: str, emotion: str) -> str:
    """Where a rendering sits relative to what its words suggest (CogAudio's conflict split)."""
    if lean == "neutral":
        return "neutral_text"
    return "consistent" if emotion == lean else "conflict"


def _key(r: Rendering, engine_id: dict) -> str:
    spec = {
        "version": RENDER_VERSION, "engine": engine_id,
        "text": r.text, "lang": r.lang,
        # only the voice of this language speaks; the others do not change this file
        "voice": {"name": r.voice.voices.get(r.lang), "pitch_base": r.voice.pitch_base,
                  "speed_wpm": r.voice.speed_wpm, "gain_db": r.voice.gain_db},
        "emotion": r.emotion, "intensity": r.intensity, "blend": None if r.blend is None else list(r.blend),
        "seed": r.seed, "snr_db": r.snr_db, "noise_exponent": r.noise_exponent,
        "prosody": {"directions": EMOTION_PROSODY, "units": UNITS, "intensity_scale": INTENSITY_SCALE,
                    "jitter": PROSODY_JITTER, "pad_s": PAD_S, "sample_rate": SAMPLE_RATE},
    }
    blob = json.dumps(spec, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:KEY_CHARS]


def rendering_key(r: Rendering, engine: TTSEngine) -> str:
    """A short hash of everything the audio of ``r`` depends on (not its id, split or labels)."""
    return _key(r, engine.identity())


def rendering_path(wav_dir: Path | str, r: Rendering, engine_id: dict) -> Path:
    """``<wav_dir>/<spk>/<utt>-<key>.wav``: the id for people, the key for the audio's settings."""
    return Path(wav_dir) / r.voice.spk / f"{r.utt}-{_key(r, engine_id)}.wav"


def _render_to_file(job: tuple[Rendering, TTSEngine, str]) -> tuple[str, float]:
    r, engine, path = job
    wav = render(r, engine)
    write_wav(path, wav)
    return r.utt, len(wav) / SAMPLE_RATE


def synthesize_all(renderings: list[Rendering], engine: TTSEngine, wav_dir, nj: int = 1,
                   progress: bool = True) -> dict[str, tuple[str, float]]:
    """Render every utterance to ``wav_dir/<spk>/<utt>-<key>.wav`` (:func:`rendering_path`).

    A file that exists was made from the same settings (its key says so) and
    is reused; files of other settings are left in place, not read.  Each
    rendering has its own seed, so the result does not depend on ``nj`` or on
    which files a previous, interrupted run already wrote (writes are atomic).
    Returns utt -> (path, duration in seconds).
    """
    engine_id = engine.identity()
    out: dict[str, tuple[str, float]] = {}
    todo = []
    for r in renderings:
        path = rendering_path(wav_dir, r, engine_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            out[r.utt] = (str(path.resolve()), sf.info(path).duration)
        else:
            todo.append((r, engine, str(path)))
    log.info("%s: %d of %d renderings to synthesise, %d found (same settings)", wav_dir, len(todo),
             len(renderings), len(renderings) - len(todo))
    bar = tqdm(total=len(todo), desc="synthesise", disable=not progress or not todo, mininterval=5)
    if nj > 1 and len(todo) > 1:
        with ProcessPoolExecutor(nj) as pool:
            for (utt, dur), (_, _, path) in zip(pool.map(_render_to_file, todo, chunksize=16), todo):
                out[utt] = (str(Path(path).resolve()), dur)
                bar.update()
    else:
        for job in todo:
            utt, dur = _render_to_file(job)
            out[utt] = (str(Path(job[2]).resolve()), dur)
            bar.update()
    bar.close()
    return out
