"""Stage 1: turn whatever stage 0 wrote into a dir every later stage can trust.

Like Kaldi's fix_data_dir.sh followed by validate_data_dir.sh, but nothing is
dropped silently: each utterance that cannot be kept is listed in the dir's
``rejected`` file with the reason (duplicate id, unknown label, unreadable or
empty audio, too long ...), and the run goes on with the rest.

Test sets are not duration-filtered (ESPnet filters train and dev only): a
score must cover every utterance of a test set a model can be given, or two
systems formatted with different limits would be scored on different sets.
What cannot be read (or is a duplicate, or has an unknown label) is rejected
everywhere, since there is nothing to keep.  The caller says which sets are
test sets; the names of the sets mean nothing here.

A set without an ``utt2sentiment`` of its own gets one from its emotions when
the corpus config has a ``sentiment_map`` (AudioLLM-Reasoning's SR task needs a
sentiment; MELD annotates one, other corpora do not).

Audio that is not already 16 kHz mono WAV/FLAC (or is a pipe or a segment of a
longer recording) is converted once into ``<dump_root>/audio/<set>/`` so that
every later stage reads plain 16 kHz files.
"""
from __future__ import annotations

import json
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Mapping

from local.data.audio import SAMPLE_RATE, AudioError, audio_info, read_audio, write_wav
from local.data.kaldi import REQUIRED, SENTIMENTS, DataDir, DataDirError, format_dist, parse_dist
from local.data.labels import LabelSet
from local.utils.jobs import map_jobs

log = logging.getLogger(__name__)


def _is_ready(spec: str) -> bool:
    """A plain 16 kHz mono WAV/FLAC file that later stages can read as is."""
    if spec.endswith("|") or Path(spec).suffix.lower() not in (".wav", ".flac"):
        return False
    try:
        sr, channels, _ = audio_info(spec)
    except Exception:
        return False  # read_audio will say why
    return sr == SAMPLE_RATE and channels == 1


def _check_audio(job: tuple[str, str, tuple[float, float | None] | None, str]
                 ) -> tuple[str, str | None, float | None, str | None]:
    """Read one utterance; convert it if needed.  Returns (utt, new_spec, dur, error)."""
    utt, spec, segment, out_path = job
    start, end = segment or (0.0, None)
    try:
        wav = read_audio(spec, utt=utt, start=start, end=end)
    except AudioError as e:
        return utt, None, None, str(e)
    if segment is not None or not _is_ready(spec):
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        write_wav(out_path, wav)
        spec = str(Path(out_path).resolve())
    return utt, spec, len(wav) / SAMPLE_RATE, None


def harmonise_labels(data: DataDir, labels: LabelSet, keep_others: bool = False) -> None:
    """Map utt2emo and utt2dist onto the recipe's label set.

    A hard label outside the set rejects its utterance; a soft label loses the share of the names
    outside the set and is renormalised (IEMOCAP's 4 classes from raters who also voted
    frustration), and is rejected when nothing is left.  An unknown name, or one the corpus map
    drops, rejects either way.  ``keep_others`` (a test set) keeps the names outside the set,
    spelled as the map spells them: stage 10 scores a model on the labels it shares with the set
    (cross-corpus) and names the others, which it cannot do with utterances that are gone."""
    if keep_others:
        labels = labels.extended()
    for utt, label in list(data.tables.get("utt2emo", {}).items()):
        target = labels.lookup(label)
        if target is None:
            data.reject(utt, f"{labels.why_not(label)} in utt2emo")
        else:
            data["utt2emo"][utt] = target
    dropped: Counter = Counter()
    for utt, value in list(data.tables.get("utt2dist", {}).items()):
        try:
            dist = parse_dist(value)
        except ValueError as e:
            data.reject(utt, f"bad utt2dist entry: {e}")
            continue
        unknown = [label for label in dist if labels.unknown(label)]
        if unknown:
            data.reject(utt, f"{labels.why_not(unknown[0])} in utt2dist")
            continue
        merged: Counter = Counter()
        for label, p in dist.items():
            target = labels.lookup(label)
            if target is None:
                dropped[label] += 1
            else:
                merged[target] += p
        total = sum(merged.values())
        if total <= 0:
            data.reject(utt, "utt2dist has no probability mass on corpus.labels "
                             f"({', '.join(labels.why_not(k) for k in dist)})")
        else:
            data["utt2dist"][utt] = format_dist({k: v / total for k, v in merged.items()})
    if dropped:
        log.info("utt2dist: shares of labels outside corpus.labels taken out and the rest renormalised "
                 "(utterances per label: %s)", ", ".join(f"{k} {v}" for k, v in sorted(dropped.items())))


def load_sentiment_map(spec: str | Path | Mapping[str, str] | None) -> dict[str, str] | None:
    """``corpus.sentiment_map`` (emotion -> positive | negative | neutral), a mapping or a JSON file; None or
    empty: the corpus has no such map.  A value outside the three sentiments is an error naming it."""
    if not spec:
        return None
    if isinstance(spec, Mapping):
        mapping = {str(k): v for k, v in spec.items()}
    else:
        with open(spec, encoding="utf-8") as f:
            mapping = {str(k): v for k, v in json.load(f).items()}
    bad = {k: v for k, v in mapping.items() if v not in SENTIMENTS}
    if bad:
        k, v = next(iter(bad.items()))
        raise ValueError(f"corpus.sentiment_map maps '{k}' to {v!r}, not one of {', '.join(SENTIMENTS)}")
    return mapping


def add_sentiment(data: DataDir, sentiment_map: Mapping[str, str] | None, where: Path | str = "") -> bool:
    """Write utt2sentiment from utt2emo through ``sentiment_map``, unless the set has its own (MELD's
    annotators judged sentiment apart from emotion, which a per-label map cannot do) or there is no map.

    Runs after the labels are mapped, so the map speaks the recipe's label names.  A label the map
    lacks is an error rather than a rejection: it is a gap in the config, the same for every utterance
    of that label, and dropping them all would silently change the ER data too."""
    if not sentiment_map or "utt2sentiment" in data or "utt2emo" not in data:
        return False
    missing = sorted(set(data["utt2emo"].values()) - set(sentiment_map))
    if missing:
        raise DataDirError(where, None, f"corpus.sentiment_map has no sentiment for the label(s) "
                           f"{', '.join(missing)} of utt2emo; map each to {', '.join(SENTIMENTS)}")
    data["utt2sentiment"] = {utt: sentiment_map[label] for utt, label in data["utt2emo"].items()}
    return True


def drop_inconsistent(data: DataDir) -> None:
    """Reject utterances that some table lacks, and ids that no utt2spk line declares."""
    for name in REQUIRED:
        if name not in data:
            raise DataDirError(name, None, "required file is missing")
    utts = set(data["utt2spk"])
    for name, table in list(data.tables.items()):
        if name == "segments" or (name == "wav.scp" and "segments" in data):
            continue
        for utt in set(table) - utts:
            data.reject(utt, f"in {name} but not in utt2spk")
        for utt in utts - set(table):
            if utt in data["utt2spk"]:
                data.reject(utt, f"missing from {name}")
    for utt, spk in data["utt2spk"].items():
        if not utt.startswith(spk):
            raise DataDirError("utt2spk", None, f"utterance id '{utt}' does not start with its speaker id "
                               f"'{spk}'; make prepare.py prefix utterance ids with the speaker id")


def _parse_segment(value: str) -> tuple[str, float, float]:
    """(reco, start, end) of a segments value; a bad line is one utterance's rejection, not the run's end."""
    fields = value.split()
    if len(fields) != 3:
        raise ValueError(f"segments line '{value}' has {len(fields)} fields after the id, "
                         "expected '<recording> <start> <end>'")
    try:
        start, end = float(fields[1]), float(fields[2])
    except ValueError:
        raise ValueError(f"segments line '{value}': start and end must be seconds") from None
    if not 0 <= start < end:
        raise ValueError(f"segments line '{value}': needs 0 <= start < end")
    return fields[0], start, end


def format_data_dir(src: Path | str, dst: Path | str, audio_dir: Path | str,
                    labels: LabelSet, min_dur: float, max_dur: float,
                    nj: int = 1, filter_duration: bool = True,
                    sentiment_map: Mapping[str, str] | None = None) -> DataDir:
    """Repair, check and normalise one data dir; write it atomically to ``dst``.

    ``filter_duration=False`` (test sets, which are never filtered) keeps utterances outside
    [min_dur, max_dur], and labels outside the recipe's set (see :func:`harmonise_labels`); how many
    were kept that way is logged.  ``sentiment_map``: see :func:`add_sentiment`.
    """
    data = DataDir.load_lenient(src)
    drop_inconsistent(data)
    harmonise_labels(data, labels, keep_others=not filter_duration)
    if add_sentiment(data, sentiment_map, src):
        log.info("%s: utt2sentiment written from utt2emo through corpus.sentiment_map", src)

    segments = data.get("segments")
    jobs = []
    for utt in data.utts:
        if segments is None:
            jobs.append((utt, data["wav.scp"][utt], None, f"{audio_dir}/{utt}.wav"))
            continue
        if utt not in segments:
            data.reject(utt, "no line in segments; wav.scp is keyed by recording")
            continue
        try:
            reco, start, end = _parse_segment(segments[utt])
        except ValueError as e:
            data.reject(utt, str(e))
            continue
        if reco not in data["wav.scp"]:
            data.reject(utt, f"segments names recording '{reco}', which is not in wav.scp")
            continue
        jobs.append((utt, data["wav.scp"][reco], (start, end), f"{audio_dir}/{utt}.wav"))
    results = map_jobs(_check_audio, jobs, nj, chunksize=32)

    wav_scp, utt2dur = {}, {}
    kept_outside = []  # test utterances the duration filter would have rejected
    for utt, spec, dur, error in results:
        if error:
            data.reject(utt, error)
            continue
        if dur < min_dur:
            problem = f"duration {dur:.2f} s is shorter than min_dur {min_dur} s"
        elif dur > max_dur:
            problem = f"duration {dur:.2f} s is longer than max_dur {max_dur} s"
        else:
            problem = None
        if problem and filter_duration:
            data.reject(utt, problem)
            continue
        if problem:
            kept_outside.append((utt, problem))
        wav_scp[utt], utt2dur[utt] = spec, f"{dur:.3f}"
    if kept_outside:
        log.warning("%s: kept %d utterances outside [min_dur, max_dur] = [%s, %s] s, since test sets are "
                    "not filtered (e.g. %s: %s)", src, len(kept_outside), min_dur, max_dur, *kept_outside[0])
    data.tables.pop("segments", None)  # every segment is a file of its own now
    data["wav.scp"] = {u: wav_scp[u] for u in data.utts}
    data["utt2dur"] = {u: utt2dur[u] for u in data.utts}
    if not len(data):
        reasons = Counter(re.sub(r"\d+(\.\d+)?", "#", why.split(": ", 1)[-1]) for why in data.rejected.values())
        raise DataDirError(src, None, f"no utterance survived formatting ({len(data.rejected)} rejected: see "
                           f"{src}/rejected); most often: " + "; ".join(f"{n} x {r}" for r, n in reasons.most_common(3)))
    data.save(dst)
    return data
