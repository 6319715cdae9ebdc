"""MSP-Podcast (UT Dallas; releases 1.6 to 1.12 and 2.0): consensus and per-annotator labels.

What changes between releases, and is therefore found rather than assumed (shared/corpora.md §3):
the label folder (``label/``, ``labels/``, ``Labels/``), the consensus file's spelling
(``labels_concensus`` before 1.10), CSV or JSON, the audio folder (``Audio/`` or ``Audios/``), the
dev split's name (``Validation``, later ``Development``: both become ``development``), and the
per-annotator file (1.11/1.12: one ``WORKER…; Major; Second; A:…; V:…; D:…;`` string per row; 2.0
and 1.6: columns; older: JSON).

- One data dir per ``Split_Set`` (``train``, ``development``, ``test1``, ``test2``, ``test3``).
- Speaker = ``spk<SpkrID>``; an ``Unknown`` speaker becomes one pseudo speaker per file
  (``unk<file>``), since one bucket of thousands of voices would be normalised as one voice.
  Utterance id = ``<speaker>-<file name without .wav>``.
- ``utt2emo`` is the consensus code (``A S H U F D C N O X``: X no agreement, O other); a recipe
  maps it.  ``utt2dist`` is the share of annotators whose primary class is each emotion (the
  "P-type" soft label), ``Other-…`` answers counted as ``other``; without a per-annotator file
  there is no ``utt2dist``, and the log says so.
- Test3 has no public labels: its files are listed, their ``utt2emo`` absent, and the dir is
  scored by nothing until they are released.
"""
from __future__ import annotations

import csv
import json
import logging
import re
from collections import Counter
from pathlib import Path

from local.data.corpora.files import find, finish, locate, read_lines
from local.data.kaldi import DataDir, format_dist

log = logging.getLogger(__name__)

SPLITS = {"train": "train", "development": "development", "validation": "development", "test1": "test1",
          "test2": "test2", "test3": "test3"}
CONSENSUS = ("FileName", "EmoClass", "SpkrID", "Split_Set")
DETAIL = re.compile(r"^\s*(\w+)\s*;\s*([^;]+?)\s*;\s*([^;]*);\s*A:\s*[\d.]+\s*;\s*V:\s*[\d.]+\s*;\s*D:\s*[\d.]+\s*;?\s*$")


def primary_class(name: str) -> str:
    """An annotator's primary class as a label name: ``Other-confused`` is ``other``."""
    name = name.strip()
    return "other" if name.lower().startswith("other") else name.lower()


def read_consensus(path: Path) -> list[dict[str, str]]:
    """The rows of ``labels_consensus.{csv,json}`` (or ``labels_concensus``), each with the columns
    :data:`CONSENSUS` as strings."""
    if path.suffix == ".json":
        return [{"FileName": name, **{k: str(v) for k, v in row.items()}}
                for name, row in json.loads(path.read_text(encoding="utf-8")).items()]
    rows = list(csv.DictReader(line for line in read_lines(path) if line.strip()))
    missing = [c for c in CONSENSUS if rows and c not in rows[0]]
    if missing:
        raise ValueError(f"{path}: no column {missing}; is this MSP-Podcast's labels_consensus.csv?")
    return rows


def read_detailed(path: Path) -> tuple[dict[str, Counter], dict[str, str]]:
    """({file name: votes per primary class}, {file name: why unusable}) of ``labels_detailed``."""
    votes: dict[str, Counter] = {}
    problems: dict[str, str] = {}
    if path.suffix == ".json":
        for name, workers in json.loads(path.read_text(encoding="utf-8")).items():
            votes[name] = Counter(primary_class(w["EmoClass_Major"]) for w in workers.values())
        return votes, problems
    rows = csv.DictReader(line for line in read_lines(path) if line.strip())
    for n, row in enumerate(rows, 2):
        name = (row.get("FileName") or "").strip()
        if "EmoDetail" in row:
            match = DETAIL.match(row["EmoDetail"] or "")
            major = match.group(2) if match else None
        else:
            major = row.get("EmoClass_Major")
        if not name:
            log.warning("%s:%d: a row with no FileName, ignored", path, n)
        elif not major or not major.strip():
            problems[name] = f"{path}:{n}: cannot read the annotator's answer {dict(row)}"
        else:
            votes.setdefault(name, Counter())[primary_class(major)] += 1
    return votes, problems


def prepare(corpus_dir: Path | str, out_dir: Path | str | None = None, *,
            var: str = "MSP_PODCAST") -> dict[str, DataDir]:
    """One data dir per split (``train``, ``development``, ``test1`` ...), written under ``out_dir``."""
    marker = "[Ll]abel*/labels_con[cs]ensus.*"
    root = locate(corpus_dir, marker, var, "MSP-Podcast's Labels/labels_consensus.csv and Audios/")
    consensus = sorted(root.glob(marker), key=lambda p: p.suffix != ".csv")[0]  # the CSV where both exist
    detailed = sorted(root.glob("[Ll]abel*/labels_detailed.*"), key=lambda p: p.suffix != ".csv")
    votes, problems = read_detailed(detailed[0]) if detailed else (None, {})
    if votes is None:
        log.warning("%s: no labels_detailed file: no soft labels (utt2dist)", root)
    wavs = {p.name: p for p in find(root, "Audio*/*.wav")}
    texts = {p.stem: p for p in find(root, "Transcripts/*.txt")}
    tables = ("wav.scp", "utt2spk", "text", "utt2emo", "utt2lang") + (("utt2dist",) if votes is not None else ())
    sets: dict[str, DataDir] = {}
    for n, row in enumerate(read_consensus(consensus), 2):
        name = row["FileName"].strip()
        stem = name[:-4] if name.endswith(".wav") else name
        split = SPLITS.get(row["Split_Set"].strip().lower())
        speaker = row["SpkrID"].strip()
        speaker = f"unk{stem}" if speaker.lower() in ("unknown", "") else f"spk{speaker}"
        utt = f"{speaker}-{stem}"
        data = sets.setdefault(split or "unknown_split", DataDir({t: {} for t in tables}))
        labelled = split != "test3"
        why = (f"{consensus}:{n}: unknown Split_Set {row['Split_Set']!r}" if split is None
               else problems.get(name)
               or (f"no audio: {name} is not in {root}/Audios" if name not in wavs else None)
               or (f"no transcript: {root}/Transcripts/{stem}.txt is missing" if stem not in texts else None)
               or (f"{consensus}:{n}: no EmoClass" if labelled and not row["EmoClass"].strip() else None)
               or (f"no annotator's answer in {detailed[0]}" if labelled and votes is not None and name not in votes
                   else None))
        if why is not None:
            data.rejected[utt] = why
            continue
        data["wav.scp"][utt] = str(wavs[name].resolve())
        data["utt2spk"][utt] = speaker
        data["text"][utt] = " ".join(" ".join(read_lines(texts[stem])).split())
        data["utt2lang"][utt] = "en"
        if labelled:
            data["utt2emo"][utt] = row["EmoClass"].strip()
            if votes is not None:
                total = sum(votes[name].values())
                data["utt2dist"][utt] = format_dist({k: v / total for k, v in sorted(votes[name].items())})
    for data in sets.values():  # test3: listed, not labelled
        for table in ("utt2emo", "utt2dist"):
            if table in data.tables and not data.tables[table]:
                del data.tables[table]
    return finish(sets, root, out_dir, "Audios/MSP-PODCAST_*.wav listed in Labels/labels_consensus.csv")
