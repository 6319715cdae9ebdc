"""Split long recordings into utterances by voice activity, and read Kaldi ``segments`` files.

Emotion models are trained on single utterances of a few seconds; a user's
10-minute recording must reach them as utterances of at most ``max_seconds``.
Two detectors give the speech regions: Silero VAD (a small neural model,
robust to music and noise) and a short-time-energy detector of our own, which
needs nothing beyond numpy and is the fallback when silero-vad is not
installed.  Everything after detection (bridging short gaps, dropping blips,
padding, cutting over-long regions) is shared, so the two differ only in what
they call speech.

Over-long regions are cut at their quietest point inside the allowed window
rather than at a fixed length: a cut through a word loses it for both halves,
and the model then hears two fragments of nothing.

No model code is imported here (layering: local/data may import local/utils
only); Silero comes from its own wheel, which carries its weights.
"""
from __future__ import annotations

import functools
import logging
import math
import threading
from pathlib import Path

import numpy as np

from local.data.audio import SAMPLE_RATE

log = logging.getLogger(__name__)

METHODS = ("auto", "silero", "energy")
FRAME_S, HOP_S = 0.025, 0.010   # energy frames, as for MFCCs
NOISE_PCT, PEAK_PCT = 10, 99    # the recording's own noise floor and speech level
FLOOR_MIN_DB = -90.0            # digital silence is no noise floor: thresholds stay above 16-bit dither
SILENT_DB = -60.0               # a recording whose loud frames stay below this holds no speech
MIN_RANGE_DB = 12.0             # nor does one whose loud frames barely rise above its floor (steady noise)
SILERO_THRESHOLD = 0.5          # the package's default speech probability

Span = tuple[float, float]


def frame_energy_db(wav: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Mean-square energy in dBFS of 25 ms frames every 10 ms (frame i is centred at i*hop + frame/2)."""
    win, hop = int(FRAME_S * sr), int(HOP_S * sr)
    if len(wav) < win:
        wav = np.pad(wav, (0, win - len(wav)))
    frames = np.lib.stride_tricks.sliding_window_view(wav.astype(np.float64), win)[::hop]
    return 10 * np.log10(np.mean(frames ** 2, axis=1) + 1e-12)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[first, last+1) index pairs of the True runs."""
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def energy_regions(wav: np.ndarray, sr: int = SAMPLE_RATE) -> list[Span]:
    """Speech regions by a double threshold set from the recording's own levels.

    Fixed dBFS thresholds fail on a quiet microphone or a noisy room, so both
    thresholds sit between this recording's noise floor (10th percentile of
    frame energy) and its speech level (99th percentile).  The low one marks
    where a region extends to (so that weak onsets such as /s/ and /f/ are
    kept); the high one must be crossed somewhere in a region (so that a door
    knock or a noise swell a few dB over the floor is not speech).  Assumes at
    least ~10% of the recording is non-speech, or the floor lands in speech.
    """
    db = frame_energy_db(wav, sr)
    floor, peak = max(np.percentile(db, NOISE_PCT), FLOOR_MIN_DB), np.percentile(db, PEAK_PCT)
    span = peak - floor
    if peak < SILENT_DB or span < MIN_RANGE_DB:
        return []
    low, high = floor + max(6.0, 0.2 * span), floor + max(10.0, 0.5 * span)
    hop, half = HOP_S, FRAME_S / 2
    return [(float(a * hop + half - hop / 2), float((b - 1) * hop + half + hop / 2))
            for a, b in _runs(db > low) if db[a:b].max() > high]


@functools.lru_cache(maxsize=1)
def load_silero():
    """Silero's TorchScript model, once per process (the JIT file needs no onnxruntime).

    silero_vad calls torch.set_num_threads(1) when imported; the caller's
    thread count is put back so that importing this detector does not slow
    the emotion model that runs next.
    """
    import torch

    threads = torch.get_num_threads()
    try:
        from silero_vad import load_silero_vad
    finally:
        torch.set_num_threads(threads)
    return load_silero_vad(onnx=False)


_silero_lock = threading.Lock()  # the model keeps recurrent state between windows


def silero_regions(wav: np.ndarray, sr: int = SAMPLE_RATE, min_speech: float = 0.25,
                   min_silence: float = 0.1) -> list[Span]:
    """Silero's regions unpadded and unbridged beyond its own 100 ms: padding and bridging are
    done once, in :class:`Segmenter`, the same way for both detectors."""
    import torch
    from silero_vad import get_speech_timestamps

    model = load_silero()
    with _silero_lock:
        stamps = get_speech_timestamps(torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)), model,
                                       threshold=SILERO_THRESHOLD, sampling_rate=sr,
                                       min_speech_duration_ms=int(min_speech * 1000),
                                       min_silence_duration_ms=int(min_silence * 1000), speech_pad_ms=0)
    return [(float(s["start"] / sr), float(s["end"] / sr)) for s in stamps]


@functools.lru_cache(maxsize=1)
def silero_unavailable() -> str | None:
    """Why Silero cannot run here, or None; checked once so that "auto" warns once."""
    try:
        load_silero()
    except Exception as e:  # ImportError, or a wheel whose JIT file this torch cannot load
        return f"{type(e).__name__}: {e}"
    return None


def bridge(regions: list[Span], min_silence: float, min_speech: float) -> list[Span]:
    """Join regions whose gap is shorter than ``min_silence``, then drop those shorter than ``min_speech``.

    A comma or a stop closure is not the end of an utterance; bridging first
    keeps the short words on either side of it.
    """
    merged: list[list[float]] = []
    for s, e in sorted(regions):
        if merged and s - merged[-1][1] < min_silence:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return [(s, e) for s, e in merged if e - s >= min_speech]


def add_pad(regions: list[Span], pad: float, duration: float) -> list[Span]:
    """Widen each region by ``pad`` on both sides, never past the recording or half-way into a gap."""
    out = []
    for i, (s, e) in enumerate(regions):
        lo = 0.0 if i == 0 else (regions[i - 1][1] + s) / 2
        hi = duration if i == len(regions) - 1 else (e + regions[i + 1][0]) / 2
        out.append((max(lo, s - pad), min(hi, e + pad)))
    return out


def split_long(regions: list[Span], db: np.ndarray, max_seconds: float, min_speech: float) -> list[Span]:
    """Cut each region longer than ``max_seconds`` at the quietest frame of its allowed window.

    The window for the next cut is [start + max/2, start + max]: no piece but
    the last is shorter than half the maximum, so a pause near the start does
    not spawn a stream of fragments.  Energy is averaged over 50 ms so that a
    cut lands in a pause or a closure, not on one quiet frame inside a vowel.
    """
    smooth = np.convolve(db, np.ones(5) / 5, mode="same") if len(db) >= 5 else db
    centre = np.arange(len(db)) * HOP_S + FRAME_S / 2
    out = []
    for s, e in regions:
        while e - s > max_seconds:
            lo, hi = s + max_seconds / 2, min(s + max_seconds, e - min_speech)
            idx = np.flatnonzero((centre >= lo) & (centre <= hi))
            cut = float(centre[idx[np.argmin(smooth[idx])]]) if len(idx) else hi
            cut = min(cut, s + max_seconds)
            out.append((float(s), cut))
            s = cut
        out.append((float(s), float(e)))
    return out


class Segmenter:
    """Voice-activity segmentation of a 16 kHz recording into (start, end) seconds.

    ``method``: "silero", "energy", or "auto" (silero when its package loads,
    else energy, with one warning saying why).  ``min_speech``: shorter
    regions are dropped (clicks, breaths).  ``min_silence``: shorter gaps are
    bridged, so a pause inside a sentence does not split it; gaps between
    separate utterances in conversation are usually longer.  ``pad``: context
    kept on each side, since detectors clip weak onsets (Silero starts up to
    ~0.08 s late on espeak speech; its ends already run 0-0.2 s late, so a
    Silero segment ends up to ~0.3 s after the speech).  Segments are
    sorted, non-overlapping (pieces of a cut region touch at the cut) and at
    most ``max_seconds`` long; no speech gives [].
    """

    def __init__(self, method: str = "auto", max_seconds: float = 30.0, min_speech: float = 0.25,
                 min_silence: float = 0.5, pad: float = 0.1):
        if method not in METHODS:
            raise ValueError(f"unknown VAD method {method!r}; expected one of {', '.join(METHODS)}")
        if not max_seconds > 2 * min_speech:
            raise ValueError(f"max_seconds ({max_seconds}) must exceed twice min_speech ({min_speech})")
        if min(min_speech, min_silence, pad) < 0:
            raise ValueError("min_speech, min_silence and pad must be >= 0")
        self.max_seconds, self.min_speech, self.min_silence, self.pad = max_seconds, min_speech, min_silence, pad
        self.requested = method
        if method == "silero":  # fail here, not at the first recording of a long job
            try:
                load_silero()
            except ImportError as e:
                raise ImportError(f"VAD method 'silero' needs the silero-vad package (pip install silero-vad): {e}"
                                  ) from e
        self.method = method if method != "auto" else ("energy" if _auto_falls_back() else "silero")

    def __call__(self, wav: np.ndarray) -> list[Span]:
        wav = np.asarray(wav, dtype=np.float32)
        if wav.ndim != 1:
            raise ValueError(f"expected mono audio (1-D), got shape {wav.shape}")
        if len(wav) == 0:
            return []
        duration = len(wav) / SAMPLE_RATE
        if self.method == "silero":
            raw = silero_regions(wav, SAMPLE_RATE, self.min_speech, min(self.min_silence, 0.1))
        else:
            raw = energy_regions(wav, SAMPLE_RATE)
        regions = add_pad(bridge(raw, self.min_silence, self.min_speech), self.pad, duration)
        return split_long(regions, frame_energy_db(wav), self.max_seconds, self.min_speech)


_fallback_warned = False


def _auto_falls_back() -> bool:
    global _fallback_warned
    why = silero_unavailable()
    if why is not None and not _fallback_warned:
        _fallback_warned = True
        log.warning("Silero VAD unavailable (%s); segmenting by short-time energy instead "
                    "(pip install silero-vad for the neural VAD)", why)
    return why is not None


def _cs(t: float) -> str:
    return "end" if t == math.inf else f"{round(t * 100):07d}"


def read_segments(path: Path | str) -> dict[str, list[tuple[str, float, float]]]:
    """Read a segments file into {recording-id: [(segment-id, start, end)]}, each list sorted by start.

    Two forms, decided by the first line and required of every line:
      Kaldi:  ``<segment-id> <recording-id> <start> <end>``
      short:  ``<recording-id> <start> <end>``, segment ids made Kaldi-style as
              ``<recording-id>-<start cs:07d>-<end cs:07d>`` (centiseconds; "end" for -1).
    Times are seconds; end -1 means "to the end of the recording" and is
    returned as ``math.inf`` (clip it with min(end, duration)).  The recording
    id is matched by the caller against the recording as named on its command
    line (the path as given) or its wav.scp key.  Blank lines are skipped; any
    other malformed line raises ValueError naming ``path:line``.
    """
    out: dict[str, list[tuple[str, float, float]]] = {}
    seen: set[str] = set()
    ncol = None
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            where = f"{path}:{n}"
            if ncol is None:
                if len(fields) not in (3, 4):
                    raise ValueError(f"{where}: expected '<segment-id> <recording-id> <start> <end>' or "
                                     f"'<recording-id> <start> <end>', got {len(fields)} fields")
                ncol = len(fields)
            if len(fields) != ncol:
                raise ValueError(f"{where}: expected {ncol} fields like the first line, got {len(fields)}")
            try:
                start, end = float(fields[-2]), float(fields[-1])
            except ValueError:
                raise ValueError(f"{where}: start/end are not numbers: {fields[-2]!r} {fields[-1]!r}") from None
            if not (math.isfinite(start) and math.isfinite(end)):
                raise ValueError(f"{where}: start/end must be finite, got {start} {end}")
            if start < 0 or (end < 0 and end != -1):
                raise ValueError(f"{where}: negative time (start {start}, end {end}; only end may be -1)")
            end = math.inf if end == -1 else end
            if start >= end:
                raise ValueError(f"{where}: start {start} is not before end {end}")
            rec = fields[-3]
            seg = fields[0] if ncol == 4 else f"{rec}-{_cs(start)}-{_cs(end)}"
            if seg in seen:
                raise ValueError(f"{where}: duplicate segment id {seg!r}")
            seen.add(seg)
            out.setdefault(rec, []).append((seg, start, end))
    for segs in out.values():
        segs.sort(key=lambda x: (x[1], x[2]))
    return out
