"""CREMA-D (``CheyneyComputerScience/CREMA-D``, or a mirror with ``AudioWAV/`` only).

``1001_DFA_ANG_XX.wav`` is actor, sentence, acted emotion, level (shared/corpora.md §5).  The soft
label is the crowd's votes on the *audio alone*: the rows of ``processedResults/tabulatedVotes.csv``
whose row name is 1xxxxx (2xxxxx rated the face, 3xxxxx face and voice).  A mirror without that file
gives no ``utt2dist``, and says so.  One data dir (``all``): CREMA-D has no official split.

- Speaker = the actor id; the CREMA-D id starts with it, so it is the utterance id unchanged.
- ``utt2emo`` is the acted emotion's code (``ANG DIS FEA HAP NEU SAD``); ``utt2int`` the level
  (``low medium high``, ``unspecified`` for ``XX``: every sentence but IEO).
- ``1076_MTI_SAD_XX`` has no signal (the corpus README): rejected, saying so.
"""
from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

from local.data.corpora.files import find, finish, locate, read_lines
from local.data.kaldi import DataDir, format_dist

log = logging.getLogger(__name__)

SENTENCES = {
    "IEO": "It's eleven o'clock.", "TIE": "That is exactly what happened.", "IOM": "I'm on my way to the meeting.",
    "IWW": "I wonder what this is about.", "TAI": "The airplane is almost full.",
    "MTI": "Maybe tomorrow it will be cold.", "IWL": "I would like a new alarm clock.",
    "ITH": "I think I have a doctor's appointment.", "DFA": "Don't forget a jacket.",
    "ITS": "I think I've seen this before.", "TSI": "The surface is slick.",
    "WSI": "We'll stop in a couple of minutes.",
}
EMOTIONS = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")
LEVELS = {"LO": "low", "MD": "medium", "HI": "high", "XX": "unspecified"}
VOTES = {"A": "anger", "D": "disgust", "F": "fear", "H": "happiness", "N": "neutral", "S": "sadness"}
KNOWN_BAD = {"1076_MTI_SAD_XX": "no signal in the released audio (CREMA-D README)"}
NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")
VOICE_ONLY = 1  # row name // 100000: 1 voice, 2 face, 3 both


def read_votes(path: Path) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """({CREMA-D id: soft label}, {CREMA-D id: why unusable}) from the voice-only rows."""
    dists: dict[str, dict[str, float]] = {}
    problems: dict[str, str] = {}
    rows = csv.reader(read_lines(path))
    header = next(rows, None) or []
    missing = [c for c in (*VOTES, "fileName") if c not in header]
    if missing:
        raise ValueError(f"{path}: no column {missing} in the header {header}; is this tabulatedVotes.csv?")
    col = {name: header.index(name) for name in (*VOTES, "fileName")}
    for n, row in enumerate(rows, 2):
        if not row:
            continue
        name = row[col["fileName"]] if len(row) > col["fileName"] else ""
        try:
            if int(row[0]) // 100000 != VOICE_ONLY:
                continue
            counts = {VOTES[k]: float(row[col[k]]) for k in VOTES}
        except (ValueError, IndexError):
            if NAME.match(name):
                problems[name] = f"{path}:{n}: cannot read the vote counts of {row}"
            else:
                log.warning("%s:%d: a row with no file name, ignored: %s", path, n, row)
            continue
        if not NAME.match(name):
            log.warning("%s:%d: %r is not a CREMA-D file name, row ignored", path, n, name)
            continue
        total = sum(counts.values())
        if total <= 0 or any(v < 0 for v in counts.values()):
            problems[name] = f"{path}:{n}: the voice-only votes {counts} are not counts"
            continue
        dists[name] = {k: v / total for k, v in counts.items() if v}
    return dists, problems


def prepare(corpus_dir: Path | str, out_dir: Path | str | None = None, *,
            var: str = "CREMA_D") -> dict[str, DataDir]:
    """``{"all": DataDir}``, written to ``out_dir/all`` when given."""
    pattern = "**/AudioWAV/[0-9][0-9][0-9][0-9]_*.wav"
    root = locate(corpus_dir, pattern, var, "CREMA-D's AudioWAV/ (1001_DFA_ANG_XX.wav ...)", depth=0)
    votes_files = find(root, "**/tabulatedVotes.csv")
    dists, problems = read_votes(votes_files[0]) if votes_files else (None, {})
    if dists is None:
        log.warning("%s: no processedResults/tabulatedVotes.csv: no soft labels (utt2dist)", root)
    data = DataDir({name: {} for name in ("wav.scp", "utt2spk", "text", "utt2emo", "utt2int", "utt2lang")})
    if dists is not None:
        data["utt2dist"] = {}
    wavs = {}
    for path in find(root, pattern):
        if NAME.match(path.stem) is None:
            log.warning("%s: not a CREMA-D file name (AAAA_SSS_EEE_LL.wav), ignored", path)
        else:
            wavs[path.stem] = path
    for utt in sorted(set(wavs) | set(dists or {}) | set(problems)):
        actor, sentence, emotion, level = NAME.match(utt).groups()
        why = (KNOWN_BAD.get(utt) or problems.get(utt)
               or (f"no audio: {utt}.wav is not under {root}" if utt not in wavs else None)
               or (f"unknown sentence code {sentence} in the file name" if sentence not in SENTENCES else None)
               or (f"unknown emotion code {emotion} in the file name" if emotion not in EMOTIONS else None)
               or (f"unknown level {level} in the file name" if level not in LEVELS else None)
               or (f"no voice-only row in {votes_files[0]}" if dists is not None and utt not in dists else None))
        if why is not None:
            data.rejected[utt] = f"{wavs[utt]}: {why}" if utt in wavs else why
            continue
        data["wav.scp"][utt] = str(wavs[utt].resolve())
        data["utt2spk"][utt] = actor
        data["text"][utt] = SENTENCES[sentence]
        data["utt2emo"][utt] = emotion
        data["utt2int"][utt] = LEVELS[level]
        data["utt2lang"][utt] = "en"
        if dists is not None:
            data["utt2dist"][utt] = format_dist(dists[utt])
    return finish({"all": data}, root, out_dir, "AudioWAV/AAAA_SSS_EEE_LL.wav")
