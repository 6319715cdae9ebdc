"""Any audio in, one record per utterance out: the core of ``emoreason-infer`` and the web demo.

Inputs are files of any common format (read by :func:`local.data.audio.read_audio`
as stage 1 reads a corpus, through ffmpeg for containers libsndfile does not
decode), folders (recursive), Kaldi ``wav.scp`` files, or ``-``: a list on
stdin.  Each is checked on its own: a missing, unreadable, corrupt, empty,
silent or over-long input becomes one record with an ``error`` and the rest
goes on, so a run over 10 000 files is never lost to one bad file.

Long recordings.  What a model hears at once is at most ``max_seconds`` (30 s:
Whisper's window).  ``split="auto"`` leaves a shorter input whole and cuts a
longer one into utterances by voice activity (:class:`local.data.segments.Segmenter`);
``"always"`` segments every input (one record per utterance even in a 20 s
file); ``"never"`` refuses inputs over the limit.  ``segments`` (a Kaldi
segments file, recording id = the input's name) replaces the detector.

Batching.  Segments of consecutive inputs share ``generate`` calls of
``batch_size``, sorted by length within the batch (less padding); records
come out in input order.  A record's ``seconds`` is its share of its batch's
model time.  A batch that fails is retried one segment at a time, so only
the segment that cannot be run gets the error.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence, TextIO

import numpy as np

from local.data.audio import AUDIO_SUFFIXES, SAMPLE_RATE, AudioError, audio_info, file_spec, read_audio
from local.data.corpora.files import in_sight
from local.data.kaldi import read_table
from local.data.segments import Segmenter
from local.eval.predictors import Predictor

log = logging.getLogger(__name__)

SPLITS = ("auto", "always", "never")
SILENCE_DBFS = -60.0        # an input whose peak stays below this is silent
MAX_DURATION = 4 * 3600.0   # longer inputs are refused before they are read into memory


@dataclass
class Input:
    name: str               # what the records call it: the path as given, or the wav.scp key
    spec: str | None        # what read_audio reads (a path or a pipe); None when ``error`` says why not
    error: str | None = None


def list_inputs(paths: Sequence[str], stdin: TextIO | None = None) -> list[Input]:
    """Expand the command line's PATHs; ``-`` reads one PATH per line from ``stdin``."""
    out: list[Input] = []
    for given in paths:
        if given == "-":
            lines = [line.strip() for line in (stdin or sys.stdin)]
            out += list_inputs([line for line in lines if line and line != "-"])
            continue
        path = Path(given)
        if path.is_dir():
            # hidden files (macOS' ._x.wav twins) and __MACOSX copies are never audio
            files = sorted(p for p in path.rglob("*")
                           if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES and in_sight(p, path))
            out += [Input(str(p), file_spec(p)) for p in files] or [
                Input(given, None, f"no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) in this folder")]
        elif path.is_file() and (path.name == "wav.scp" or path.suffix == ".scp"):
            try:
                out += [Input(key, spec) for key, spec in read_table(path).items()]
            except Exception as e:  # a malformed table: its reader names the line
                out.append(Input(given, None, f"unreadable wav.scp: {e}"))
        elif path.is_file():
            out.append(Input(given, file_spec(path)))
        else:
            out.append(Input(given, None, "no such file or directory"))
    return out


def load(inp: Input, max_duration: float = MAX_DURATION) -> np.ndarray:
    """The input's 16-kHz mono waveform; AudioError (with the reason) when it cannot be used."""
    if not inp.spec.rstrip().endswith("|"):
        try:
            sr, _, frames = audio_info(inp.spec)
        except Exception:
            sr = frames = None  # let read_audio say what is wrong
        if sr and frames / sr > max_duration:
            raise AudioError(f"{inp.name}: over-long: {frames / sr:.0f} s > the {max_duration:.0f} s limit "
                             "(--max_duration); cut it first")
    wav = read_audio(inp.spec, inp.name)
    if len(wav) / SAMPLE_RATE > max_duration:
        raise AudioError(f"{inp.name}: over-long: {len(wav) / SAMPLE_RATE:.0f} s > the {max_duration:.0f} s "
                         "limit (--max_duration); cut it first")
    return wav


def peak_dbfs(wav: np.ndarray) -> float:
    return float(20 * np.log10(max(float(np.abs(wav).max()), 1e-10)))


def segment(name: str, wav: np.ndarray, segmenter: Segmenter, split: str, max_seconds: float,
            given: Mapping[str, list] | None = None) -> list[tuple[float, float]]:
    """Where the utterances of one input are, in seconds (see the module doc); AudioError when none."""
    duration = len(wav) / SAMPLE_RATE
    if given is not None:
        if name not in given:
            raise AudioError(f"{name}: not in the --segments file (its recording ids are the inputs' names)")
        spans = [(start, duration if end < 0 else min(end, duration))  # end -1 or inf: to the end
                 for _, start, end in given[name]]
        long = [f"{s:.2f}-{e:.2f}" for s, e in spans if e - s > max_seconds]
        if long:
            raise AudioError(f"{name}: segments {', '.join(long[:3])} are longer than {max_seconds:g} s "
                             "(--max_seconds)")
        return spans
    if peak_dbfs(wav) < SILENCE_DBFS:
        raise AudioError(f"{name}: silent: its peak is {peak_dbfs(wav):.0f} dBFS (below {SILENCE_DBFS:.0f})")
    if split == "never" or (split == "auto" and duration <= max_seconds):
        if duration > max_seconds:
            raise AudioError(f"{name}: {duration:.1f} s is longer than the model's {max_seconds:g} s "
                             "(--max_seconds); use --split auto to cut it into utterances")
        return [(0.0, duration)]
    spans = segmenter(wav)
    if not spans:
        raise AudioError(f"{name}: no speech found ({segmenter.method} voice activity detection)")
    return spans


@dataclass
class _Item:
    record: dict
    wav: np.ndarray | None = None  # None: the record is final (an error)


def _run_batch(predictor: Predictor, items: list[_Item]) -> None:
    todo = [it for it in items if it.wav is not None]
    if not todo:
        return
    todo.sort(key=lambda it: len(it.wav))
    start = time.perf_counter()
    try:
        results = predictor.predict([it.wav for it in todo])
    except Exception as e:
        if len(todo) == 1:
            todo[0].record["error"] = f"{todo[0].record['input']}: the model failed on this segment: {e}"
            todo[0].wav = None
            return
        log.warning("a batch of %d failed (%s); running its segments one at a time", len(todo), e)
        for it in todo:
            _run_batch(predictor, [it])
        return
    share = (time.perf_counter() - start) / len(todo)
    for it, result in zip(todo, results):
        it.record.update(result, seconds=round(share, 4))
        it.wav = None


def infer(predictor: Predictor, inputs: Iterable[Input], *, segmenter: Segmenter | None = None,
          split: str = "auto", max_seconds: float = 30.0, segments: Mapping[str, list] | None = None,
          batch_size: int = 8, max_duration: float = MAX_DURATION, progress: bool = False) -> Iterator[dict]:
    """Records in input order: ``input, start, end, label, label_from, dist, text, seconds`` per utterance,
    or ``input, error`` for an input (or a segment) that could not be run."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got '{split}'")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    segmenter = segmenter or Segmenter(max_seconds=max_seconds)
    inputs = list(inputs)
    pending: list[_Item] = []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(inputs), unit="file", file=sys.stderr, disable=None)
    for inp in inputs:
        try:
            if inp.error:
                raise AudioError(f"{inp.name}: {inp.error}")
            wav = load(inp, max_duration)
            spans = segment(inp.name, wav, segmenter, split, max_seconds, segments)
            for start, end in spans:
                piece = wav[int(round(start * SAMPLE_RATE)):int(round(end * SAMPLE_RATE))]
                pending.append(_Item({"input": inp.name, "start": round(start, 3), "end": round(end, 3)}, piece))
        except AudioError as e:
            pending.append(_Item({"input": inp.name, "error": str(e)}))
        if bar is not None:
            bar.update()
        if sum(it.wav is not None for it in pending) >= batch_size:
            _run_batch(predictor, pending)
            yield from (it.record for it in pending)
            pending = []
    _run_batch(predictor, pending)
    yield from (it.record for it in pending)
    if bar is not None:
        bar.close()


def infer_file(predictor: Predictor, path: str, max_seconds: float = 30.0, split: str = "auto",
               segmenter: Segmenter | None = None) -> list[dict]:
    """One file's records (the demo's call)."""
    return list(infer(predictor, list_inputs([path]), segmenter=segmenter, split=split, max_seconds=max_seconds))


def table(records: Sequence[dict], width: int = 60) -> str:
    """Records as aligned text for people: input, span, label with its probability, the text's start."""
    rows = [("input", "start-end", "label", "p", "text")]
    for r in records:
        if "error" in r:
            rows.append((r["input"], "", "ERROR", "", r["error"]))
            continue
        p = f"{r['dist'][r['label']]:.2f}" if r.get("dist") and r.get("label") in r["dist"] else ""
        text = " ".join((r.get("text") or "").split())
        rows.append((r["input"], f"{r['start']:.2f}-{r['end']:.2f}", r.get("label") or "-", p,
                     text if len(text) <= width else text[:width - 3] + "..."))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4] for row in rows)
