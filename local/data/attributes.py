"""Acoustic attributes of C²SER's explicit CoT: pitch, loudness, speaking rate.

C²SER (§III-C, Steps 1-2) grounds its reasoning text in three measured
attributes, each binned Low / Medium / High with the mean μ and standard
deviation σ of the training corpus.  We measure four numbers per utterance:

* ``f0_hz``: mean F0 over voiced frames, the paper's "utterance-level mean".
  The paper uses PENN; we offer a numpy YIN (fast, CPU, the default: pyworld
  has no CPython 3.11 wheel on PyPI) and torchcrepe (slower, more robust in noise).
* ``f0_range_st``: 12·log2(p95 / p5) of the voiced F0, in semitones.  The
  5th/95th percentiles ignore up to 5 % of frames at each end, so the isolated
  octave jumps every tracker makes do not set the range; semitones make a
  speaker's range comparable whatever their register.
* ``lufs``: ITU-R BS.1770 integrated loudness (pyloudnorm), as in the paper.
* ``phones_per_sec``: espeak-ng phones of the transcript divided by the
  duration left after trimming leading and trailing silence.

Silence is relative: a frame more than ``silence_db`` below the loudest frame
of its utterance (or below one 16-bit LSB) is silence.  The same rule trims
the edges for the rate and keeps background hum out of the pitch.

An utterance whose pitch or rate cannot be measured (no voiced frames, an
empty transcript, nothing above the silence floor, no espeak-ng voice for its
language) is rejected from train and dev sets with the reason rather than
given a guessed level: a "Medium" that was never measured would put a false
statement into the reasoning text the model learns from.  A test set keeps
it, since a score must cover every utterance a model can be given (ESPnet
never filters test sets): its utt2attr line says ``unknown`` for each level
that could not be measured and ``nan`` for the raw value, e.g.
``pitch=unknown pitch_range=unknown loudness=Low rate=Medium f0_hz=nan
f0_range_st=nan lufs=-63.2 phones_per_sec=11.8``, so every consumer can tell
a measurement from a gap.  Loudness is never unknown: a clip below BS.1770's
-70 LUFS absolute gate (digital silence included) gets -inf, i.e. certainly
Low, and is logged.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Mapping, Protocol

import numpy as np
import torch

from local.data.audio import SAMPLE_RATE, AudioError, read_audio
from local.data.kaldi import DataDir, DataDirError, format_kv, validate_data_dir
from local.data.pitch import yin, yin_lags
from local.data.synth import to_pinyin
from local.utils.jobs import map_jobs

logger = logging.getLogger(__name__)

# Binned attribute -> the raw value it is binned from, in utt2attr order.
ATTRIBUTES = {"pitch": "f0_hz", "pitch_range": "f0_range_st", "loudness": "lufs", "rate": "phones_per_sec"}
LEVELS = ("Low", "Medium", "High")
UNKNOWN = "unknown"  # the level of what could not be measured; only test sets keep such utterances
STATS_FILE = "attr_stats.json"

ENERGY_WIN_S = 0.025       # the usual 25 ms speech analysis frame, for frame levels
DIGITAL_SILENCE_DB = -90.0  # RMS of one 16-bit LSB: quieter than this is no signal at all


@dataclass(frozen=True)
class AttributeSettings:
    """The ``attributes`` config section (conf/stage/attributes.yaml documents each key)."""

    pitch_backend: str
    f0_min: float
    f0_max: float
    hop_s: float
    min_voiced_frames: int
    silence_db: float
    yin_threshold: float
    crepe_model: str
    crepe_device: str
    crepe_periodicity: float
    crepe_batch_size: int
    voices: Mapping[str, str]

    @classmethod
    def from_cfg(cls, section) -> "AttributeSettings":
        from omegaconf import OmegaConf

        return cls(**OmegaConf.to_container(section, resolve=True))


# --- frames and silence --------------------------------------------------------

def frame_levels_db(wav: np.ndarray, sr: int, hop: int, win: int | None = None) -> np.ndarray:
    """RMS level (dBFS) of frames of ``win`` samples (default 25 ms) centred on t = i·hop, i = 0 .. len//hop.

    Centring (zero padding half a window each side) matches the frames of both
    pitch trackers, so a level and an F0 with the same index describe the same time.
    """
    win = win or round(ENERGY_WIN_S * sr)
    n_frames = 1 + len(wav) // hop
    padded = np.pad(np.asarray(wav, np.float64), (win // 2, win - win // 2))
    frames = np.lib.stride_tricks.sliding_window_view(padded, win)[::hop][:n_frames]
    return 10 * np.log10(np.mean(frames ** 2, axis=1) + 1e-20)


def non_silent(levels_db: np.ndarray, silence_db: float) -> np.ndarray:
    """Frames within ``silence_db`` of the loudest frame and above digital silence."""
    floor = max(levels_db.max() - silence_db, DIGITAL_SILENCE_DB)
    return levels_db >= floor


def speech_duration(wav: np.ndarray, sr: int, hop: int, silence_db: float) -> float:
    """Seconds from the first to the last non-silent frame (edges only: inner pauses stay).

    The frames here are one hop long and do not overlap, so a frame that only
    grazes the speech moves an edge by at most one hop (10 ms).
    """
    loud = np.flatnonzero(non_silent(frame_levels_db(wav, sr, hop, win=hop), silence_db))
    if loud.size == 0:
        return 0.0
    start = max(0.0, (loud[0] - 0.5) * hop / sr)
    end = min(len(wav) / sr, (loud[-1] + 0.5) * hop / sr)
    return end - start


# --- pitch ---------------------------------------------------------------------

class PitchTracker(Protocol):
    """F0 in Hz and a voicing decision per frame (frames centred every hop)."""

    def __call__(self, wav: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class YinTracker:
    """YIN (de Cheveigné & Kawahara, 2002; :func:`local.data.pitch.yin`, in float64 here).

    A frame is voiced when its cumulative-mean-normalised difference dips below
    ``threshold`` (the aperiodicity) and it is not silent; the period is the
    first such dip, refined by a parabola through its neighbours.
    """

    f0_min: float = 50.0
    f0_max: float = 550.0
    threshold: float = 0.2
    hop_s: float = 0.01
    silence_db: float = 40.0
    block: int = 1000  # frames per FFT batch, bounds memory on long files

    def __call__(self, wav: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
        hop = round(self.hop_s * sr)
        win, tau_min, tau_max = yin_lags(sr, self.f0_min, self.f0_max)
        length = win + tau_max + 1  # lags up to tau_max + 1 to test a dip at tau_max
        n_frames = 1 + len(wav) // hop
        padded = np.pad(np.asarray(wav, np.float64), (length // 2, length))
        frames = np.lib.stride_tricks.sliding_window_view(padded, length)[::hop][:n_frames]
        f0, periodic = [], []
        for i in range(0, n_frames, self.block):
            hz, is_periodic, _ = yin(torch.from_numpy(np.ascontiguousarray(frames[i:i + self.block])),
                                     win, tau_min, tau_max, sr, self.threshold)
            f0.append(hz.numpy())
            periodic.append(is_periodic.numpy())
        loud = non_silent(frame_levels_db(wav, sr, hop), self.silence_db)
        voiced = np.concatenate(periodic) & loud
        return np.where(voiced, np.concatenate(f0), 0.0), voiced


@dataclass(frozen=True)
class CrepeTracker:
    """torchcrepe (CREPE, Kim et al. 2018); its weights ship inside the PyPI package.

    Voiced = periodicity (the network's confidence) at least ``periodicity`` and
    not silent.  Viterbi decoding, torchcrepe's default, smooths octave jumps.
    """

    f0_min: float = 50.0
    f0_max: float = 550.0
    model: str = "full"
    device: str = "cpu"
    periodicity: float = 0.21
    batch_size: int = 512
    hop_s: float = 0.01
    silence_db: float = 40.0

    def __call__(self, wav: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
        import torch
        import torchcrepe

        if sr != torchcrepe.SAMPLE_RATE:
            raise ValueError(f"crepe needs {torchcrepe.SAMPLE_RATE} Hz audio, got {sr} Hz")
        hop = round(self.hop_s * sr)
        audio = torch.from_numpy(np.asarray(wav, np.float32))[None]
        with torch.inference_mode():
            f0, periodicity = torchcrepe.predict(
                audio, sr, hop, self.f0_min, self.f0_max, self.model, return_periodicity=True,
                batch_size=self.batch_size, device=self.device)
        f0, periodicity = f0[0].cpu().numpy().astype(np.float64), periodicity[0].cpu().numpy()
        loud = non_silent(frame_levels_db(wav, sr, hop), self.silence_db)
        voiced = (periodicity >= self.periodicity) & loud
        return np.where(voiced, f0, 0.0), voiced


def make_tracker(settings: AttributeSettings) -> PitchTracker:
    common = dict(f0_min=settings.f0_min, f0_max=settings.f0_max, hop_s=settings.hop_s,
                  silence_db=settings.silence_db)
    if settings.pitch_backend == "yin":
        return YinTracker(threshold=settings.yin_threshold, **common)
    if settings.pitch_backend == "crepe":
        return CrepeTracker(model=settings.crepe_model, device=settings.crepe_device,
                            periodicity=settings.crepe_periodicity, batch_size=settings.crepe_batch_size,
                            **common)
    raise ValueError(f"attributes.pitch_backend: unknown backend '{settings.pitch_backend}' (yin | crepe)")


def pitch_summary(f0: np.ndarray, voiced: np.ndarray, min_voiced: int = 1) -> tuple[float, float]:
    """(mean F0 in Hz, p5-p95 range in semitones) of voiced frames; NaNs below ``min_voiced`` frames."""
    values = f0[voiced]
    if values.size < max(1, min_voiced):
        return math.nan, math.nan
    low, high = np.percentile(values, [5, 95])
    return float(values.mean()), float(12 * np.log2(high / low))


# --- loudness ------------------------------------------------------------------

def loudness_lufs(wav: np.ndarray, sr: int) -> float:
    """BS.1770 integrated loudness in LUFS; -inf below the -70 LUFS absolute gate.

    BS.1770 gates 400 ms blocks.  A shorter clip is measured as one block
    spanning the whole clip, i.e. its K-weighted mean square: the standard's
    block loudness over the only window there is (no repetition, no padding
    silence that would lower it).
    """
    import pyloudnorm

    data = np.asarray(wav, np.float64)
    block = min(0.4, len(data) / sr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # log10(0) and empty means of a silent clip
        value = pyloudnorm.Meter(sr, block_size=block).integrated_loudness(data)
    return float(value) if math.isfinite(value) else -math.inf


# --- phones --------------------------------------------------------------------

# Language switches such as "(en)" that espeak-ng writes around foreign words.
_LANG_SWITCH = re.compile(r"\([A-Za-z-]+\)")
# A nonsense word, a clause of its own between the texts of one espeak-ng run
# (a transcript that is exactly this word only costs the per-text fallback).
_SENTINEL = "zqxjv"


def count_phones(phonemes: str) -> int:
    """Phones in espeak-ng ``--ipa --sep=_`` output.

    Phones are the ``_``- and space-separated tokens, so espeak's own units
    stay whole: a diphthong (aɪ), an affricate (tʃ) or a Mandarin final (ong)
    is one phone.  Stress marks, length marks and tone numbers are attached to
    a phone and add none; a token with no letter left (punctuation, an empty
    token between separators) is not a phone.
    """
    tokens = _LANG_SWITCH.sub(" ", phonemes).replace("_", " ").split()
    return sum(any(ch.isalpha() for ch in token) for token in tokens)


def phonemise(texts: list[str], voice: str, binary: str = "espeak-ng") -> list[str]:
    """IPA phonemes of each text, from one espeak-ng process for all of them.

    espeak-ng writes one line per clause, not per input line, so the texts are
    interleaved with a sentinel line and the output is cut at the sentinel's
    own phonemisation (the first output line).  Should a text swallow a
    sentinel, the cut is off and we fall back to one process per text.
    """
    texts = [" ".join(t.split()) for t in texts]
    lines = [_SENTINEL] + [line for text in texts for line in (text, _SENTINEL)]
    marker, *out = _espeak(binary, voice, "\n".join(lines) + "\n").splitlines()
    pieces, current = [], []
    for line in out:
        if line == marker:
            pieces.append(" ".join(current))
            current = []
        else:
            current.append(line)
    if len(pieces) == len(texts) and not "".join(current).strip():
        return pieces
    logger.warning("espeak-ng output of %d texts did not split cleanly; phonemising one at a time",
                   len(texts))
    return [" ".join(_espeak(binary, voice, text + "\n").splitlines()) for text in texts]


def _espeak(binary: str, voice: str, text: str) -> str:
    proc = subprocess.run([binary, "-q", "--ipa", "--sep=_", "-v", voice], input=text,
                          capture_output=True, text=True, encoding="utf-8")
    if proc.returncode != 0:
        raise RuntimeError(f"{binary} -v {voice} failed ({proc.returncode}): {proc.stderr.strip()[:300]}")
    return proc.stdout


class PhoneCounter:
    """Phone counts per (lang, text), cached: LIME-style corpora repeat each text many times."""

    def __init__(self, voices: Mapping[str, str], binary: str = "espeak-ng"):
        self.voices, self.binary = dict(voices), binary
        self.cache: dict[tuple[str, str], int] = {}

    def count(self, items: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """Counts for (lang, text) pairs; a language without a voice raises KeyError."""
        items = set(items)
        todo: dict[str, list[str]] = {}
        for lang, text in sorted(items - set(self.cache)):
            todo.setdefault(lang, []).append(text)
        for lang, texts in todo.items():
            voice = self.voices[lang]
            # espeak-ng's Mandarin voices do not read Hanzi; the pinyin one reads TONE3 pinyin
            spoken = [to_pinyin(t) for t in texts] if voice.startswith("cmn-latn-pinyin") else texts
            for text, phonemes in zip(texts, phonemise(spoken, voice, self.binary)):
                self.cache[lang, text] = count_phones(phonemes)
        return {item: self.cache[item] for item in items}


# --- one utterance ---------------------------------------------------------------

def measure(wav: np.ndarray, sr: int, n_phones: int | None, tracker: PitchTracker,
            settings: AttributeSettings) -> tuple[dict[str, float], list[str]]:
    """Raw attribute values (NaN where unmeasurable) and, for each one that cannot be measured, why.

    ``n_phones=None``: the phones could not be counted (the caller knows why
    and says so); the rate is NaN and the rest is still measured.
    """
    f0, voiced = tracker(wav, sr)
    f0_hz, f0_range = pitch_summary(f0, voiced, settings.min_voiced_frames)
    duration = speech_duration(wav, sr, round(settings.hop_s * sr), settings.silence_db)
    rate = n_phones / duration if n_phones and duration > 0 else math.nan
    problems = []
    if math.isnan(f0_hz):
        problems.append(f"pitch unmeasurable: {int(voiced.sum())} voiced frames, "
                        f"attributes.min_voiced_frames={settings.min_voiced_frames}")
    if n_phones == 0:
        problems.append("rate unmeasurable: the transcript has no phones")
    elif n_phones is not None and duration == 0:
        problems.append("rate unmeasurable: no frame above digital silence")
    values = {"f0_hz": f0_hz, "f0_range_st": f0_range, "lufs": loudness_lufs(wav, sr), "phones_per_sec": rate}
    return values, problems


# Pool workers build their tracker once (crepe loads its network) in _init_worker.
_worker_state: dict = {}


def _init_worker(settings: AttributeSettings) -> None:
    _worker_state.update(settings=settings, tracker=make_tracker(settings))


def _measure_job(job: tuple) -> tuple[dict[str, float] | None, list[str]]:
    utt, spec, start, end, n_phones = job
    try:
        wav = read_audio(spec, utt, SAMPLE_RATE, start, end)
    except AudioError as e:
        return None, [str(e)]
    return measure(wav, SAMPLE_RATE, n_phones, _worker_state["tracker"], _worker_state["settings"])


def _run_jobs(jobs: list[tuple], settings: AttributeSettings, nj: int) -> list:
    """Results in job order, so the output does not depend on nj.

    Workers are spawned, not forked: forking a parent that holds torch or CUDA
    state can deadlock, and spawn behaves the same on every OS.
    """
    return map_jobs(_measure_job, jobs, nj, initializer=_init_worker, initargs=(settings,),
                    chunksize=max(1, len(jobs) // (4 * nj)), spawn=True)


def _audio_sources(data: DataDir) -> dict[str, tuple[str, float, float | None]]:
    """utt -> (wav.scp entry, start, end), honouring a segments file.

    Stage 1 cuts segments into files of their own, so a segments file here was
    not formatted; an utterance without audio is rejected, whatever the set.
    """
    wav_scp, segments = data["wav.scp"], data.get("segments")
    if not segments:
        return {utt: (wav_scp[utt], 0.0, None) for utt in data.utts}
    sources = {}
    for utt in data.utts:
        if utt not in segments:
            data.reject(utt, "attributes: no line in segments; wav.scp is keyed by recording")
            continue
        reco, start, end = segments[utt].split()
        sources[utt] = (wav_scp[reco], float(start), float(end))
    return sources


def measure_data_dir(data: DataDir, settings: AttributeSettings, counter: PhoneCounter,
                     default_lang: str, nj: int = 1,
                     keep_unmeasurable: bool = False) -> dict[str, dict[str, float]]:
    """Raw attributes per utterance; an utterance that cannot be measured is rejected from ``data``.

    ``keep_unmeasurable`` (test sets) keeps it instead, with NaN for what
    could not be measured, and logs why.  Unreadable audio is rejected either way.
    """
    langs = data.get("utt2lang") or {}
    texts = data["text"]
    pairs, no_voice = {}, {}
    for utt in data.utts:
        lang = langs.get(utt, default_lang)
        if lang in settings.voices:
            pairs[utt] = (lang, texts[utt])
            continue
        reason = f"no espeak-ng voice for language '{lang}' (add it to attributes.voices)"
        if keep_unmeasurable:
            no_voice[utt] = f"rate unmeasurable: {reason}"
        else:
            data.reject(utt, f"attributes: {reason}")
    counts = counter.count(pairs.values())
    sources = _audio_sources(data)
    jobs = [(utt, *sources[utt], counts[pairs[utt]] if utt in pairs else None) for utt in data.utts]
    raw = {}
    for job, (values, problems) in zip(jobs, _run_jobs(jobs, settings, nj)):
        utt = job[0]
        problems = [no_voice[utt], *problems] if utt in no_voice else problems
        if problems and (values is None or not keep_unmeasurable):
            data.reject(utt, "attributes: " + "; ".join(problems))
            continue
        if problems:
            logger.warning("%s: kept with unmeasured attributes (a test set is not filtered): %s",
                           utt, "; ".join(problems))
        if values["lufs"] == -math.inf:
            logger.warning("%s: below the -70 LUFS gate (silent?); loudness binned Low", utt)
        raw[utt] = values
    return raw


# --- binning (C²SER Step 2) ---------------------------------------------------------

def attribute_stats(raw: Iterable[Mapping[str, float]]) -> dict[str, dict]:
    """μ and σ (population, ddof=0) of each attribute over finite values.

    -inf loudness (silence) is left out: it would make μ itself -inf.
    """
    rows = list(raw)
    stats = {}
    for attr, key in ATTRIBUTES.items():
        values = np.array([row[key] for row in rows], dtype=np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise ValueError(f"no finite '{key}' value to compute the statistics of '{attr}' from")
        stats[attr] = {"value": key, "mean": float(values.mean()), "std": float(values.std()),
                       "n": int(values.size)}
    return stats


def level(value: float, mean: float, std: float) -> str:
    """Low below μ-σ, High above μ+σ, Medium in between (bounds included)."""
    if math.isnan(value):
        raise ValueError("cannot bin NaN: an unmeasured value has no level (bin_attributes calls it unknown)")
    if value < mean - std:
        return "Low"
    if value > mean + std:
        return "High"
    return "Medium"


def bin_attributes(values: Mapping[str, float], stats: Mapping[str, dict]) -> dict[str, object]:
    """The utt2attr fields: the levels first, then the raw values they come from (NaN -> unknown)."""
    levels = {attr: UNKNOWN if math.isnan(values[key]) else level(values[key], stats[attr]["mean"],
                                                                   stats[attr]["std"])
              for attr, key in ATTRIBUTES.items()}
    return {**levels, **{key: float(values[key]) for key in ATTRIBUTES.values()}}


def write_stats(path: Path | str, stats: Mapping[str, dict], **meta: object) -> None:
    """Write the statistics atomically (temp file in the same dir, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({**meta, "attributes": stats}, f, indent=2)
            f.write("\n")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


# --- the stage ---------------------------------------------------------------------

@dataclass
class SetSummary:
    kept: int
    rejected: int  # by this stage
    levels: dict[str, Counter]
    unmeasured: int = 0  # kept with some level unknown (test sets), which train / dev would reject

    def __str__(self) -> str:
        counts = ", ".join(f"{attr} " + "/".join(str(self.levels[attr][lv]) for lv in LEVELS)
                           + (f" (+{self.levels[attr][UNKNOWN]} {UNKNOWN})" if self.levels[attr][UNKNOWN] else "")
                           for attr in ATTRIBUTES)
        kept = (f", {self.unmeasured} kept with unmeasured attributes (test set, not filtered)"
                if self.unmeasured else "")
        return f"{self.kept} utts, {self.rejected} rejected{kept}; Low/Medium/High: {counts}"


def add_attributes(data_root: Path | str, train_set: str, other_sets: Iterable[str],
                   settings: AttributeSettings, default_lang: str = "en",
                   nj: int = 1, test_sets: Iterable[str] = ()) -> dict[str, SetSummary]:
    """Measure every set, take μ/σ from the train set only, write utt2attr everywhere.

    ``test_sets`` (measured too, whether or not in ``other_sets``) keep their
    unmeasurable utterances with ``unknown`` levels; the others reject them.
    Re-running gives the same result: the statistics come from the train
    utterances that were kept, and those are exactly what a re-run reads.
    """
    data_root = Path(data_root)
    test_sets = list(dict.fromkeys(test_sets))
    if train_set in test_sets:
        raise ValueError(f"'{train_set}' is the train set and cannot be a test set: its μ and σ must come "
                         "from measured utterances only")
    counter = PhoneCounter(settings.voices)
    data, raw, rejected = _measure_set(data_root / train_set, settings, counter, default_lang, nj, False)
    stats = attribute_stats(raw.values())
    write_stats(data_root / train_set / STATS_FILE, stats, train_set=train_set, **asdict(settings))
    summaries = {train_set: _write_set(data_root / train_set, data, raw, stats, rejected)}
    for name in dict.fromkeys([*other_sets, *test_sets]):
        if name != train_set:
            data, raw, rejected = _measure_set(data_root / name, settings, counter, default_lang, nj,
                                               name in test_sets)
            summaries[name] = _write_set(data_root / name, data, raw, stats, rejected)
    return summaries


def _measure_set(path: Path, settings: AttributeSettings, counter: PhoneCounter, default_lang: str,
                 nj: int, keep_unmeasurable: bool) -> tuple[DataDir, dict[str, dict[str, float]], int]:
    """(data dir, raw values, number of utterances this stage rejected)."""
    # labels=None: stage 1 checked them against the recipe's set (a test set keeps names outside it)
    data = validate_data_dir(path, labels=None, check_audio=False)
    if "text" not in data:
        raise DataDirError(path / "text", None, "is missing: the speaking rate needs transcripts (stage 1 "
                           "writes them with --format_args \"format.asr.model=<a Whisper dir>\"; or skip stages "
                           "2-3, --skip_stages \"2 3\", as egs/emobox does)")
    before = len(data.rejected)
    raw = measure_data_dir(data, settings, counter, default_lang, nj, keep_unmeasurable)
    return data, raw, len(data.rejected) - before


def _write_set(path: Path, data: DataDir, raw: Mapping[str, Mapping[str, float]],
               stats: Mapping[str, dict], rejected: int) -> SetSummary:
    utt2attr = {utt: bin_attributes(values, stats) for utt, values in raw.items()}
    data.tables["utt2attr"] = {utt: format_kv(fields) for utt, fields in utt2attr.items()}
    data.save(path)
    levels = {attr: Counter(fields[attr] for fields in utt2attr.values()) for attr in ATTRIBUTES}
    unmeasured = sum(any(fields[attr] == UNKNOWN for attr in ATTRIBUTES) for fields in utt2attr.values())
    return SetSummary(len(raw), rejected, levels, unmeasured)
