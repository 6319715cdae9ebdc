"""IEMOCAP as USC releases it (``IEMOCAP_full_release/Session1..5``): one data dir per session.

One dir per session because every standard split is a union of sessions (leave-one-session-out
folds, ESPnet's Session-5 test split); a recipe combines them.  What the preparer gets right, and
where public recipes go wrong (shared/corpora.md §2):

- The speaker is the session plus the letter of the id's *last* field: ``Ses01F_impro01_M000`` is
  the male actor of session 1 (``Ses01M``).  The letter after ``Ses01`` names the dialog, whose turns
  alternate between both actors; reading the gender at a fixed character offset breaks on the
  ``a``/``b``-suffixed dialog names.  Utterance id = ``<speaker>-<IEMOCAP id>``, so Kaldi's sort
  groups a speaker's utterances and a user finds the utterance in their copy.
- ``utt2emo`` is the consensus code as released (``neu hap exc sad ang fru sur fea dis oth xxx``;
  ``xxx``: the raters did not agree).  Which of them a system keeps (4 classes, ``exc`` merged into
  happiness, or all) is the recipe's label map, applied by stage 1.
- ``utt2dist`` counts the categories of the external evaluators only (``C-E*`` lines), each
  category a rater lists sharing that rater's vote (``vote_weight="rater"``) or counting one
  vote each (``"tag"``); ``C-F*``/``C-M*`` are the actors rating themselves.
- ``utt2subset`` is ``impro`` or ``script``: the two halves of the corpus behave differently.
- Turns whose id holds ``XX`` have a transcript line but no audio and no label: not utterances.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from local.data.corpora.files import find, finish, locate, read_lines
from local.data.kaldi import DataDir, format_dist

log = logging.getLogger(__name__)

TABLES = ("wav.scp", "utt2spk", "text", "utt2emo", "utt2dist", "utt2lang", "utt2subset")
VOTE_WEIGHTS = ("rater", "tag")

NATIVE_ID = re.compile(r"^Ses0([1-5])[MF]_(impro|script)\w*_([MF])\d{3}$")
ANY_ID = re.compile(r"Ses0[1-5][MF]_\w+?_[MF]\d{3}")
SUMMARY = re.compile(r"^\[\s*[\d.]+\s*-\s*[\d.]+\s*\]\s+(\S+)\s+([a-z]{3})\s+\[[\d.,\s]*\]\s*$")
RATING = re.compile(r"^C-([A-Z]\d*):(.*)$")
TRANSCRIPT = re.compile(r"^(\S+) \[[\d.]+-[\d.]+\]:\s?(.*)$")


@dataclass
class Entry:
    label: str
    votes: Counter = field(default_factory=Counter)


def category(tag: str) -> str:
    """An evaluator's category as a label name: ``Neutral state`` (the Categorical/ spelling) is
    ``neutral``; other spellings lower-cased, spaces as ``_``."""
    name = tag.strip().lower()
    return "neutral" if name == "neutral state" else "_".join(name.split())


def read_evaluation(path: Path, vote_weight: str) -> tuple[dict[str, Entry], dict[str, str]]:
    """({IEMOCAP id: Entry}, {IEMOCAP id: why it is unusable}) of one ``EmoEvaluation/<dialog>.txt``."""
    entries: dict[str, Entry] = {}
    problems: dict[str, str] = {}
    current: Entry | None = None
    for n, line in enumerate(read_lines(path), 1):
        if line.startswith("["):
            current = None
            match = SUMMARY.match(line)
            if match is None:
                ident = ANY_ID.search(line)
                if ident is not None:
                    problems[ident.group(0)] = f"{path}:{n}: cannot read the summary line {line.strip()!r}"
                else:
                    log.warning("%s:%d: a summary line with no utterance id, ignored: %r", path, n, line)
                continue
            ident = match.group(1)
            current = entries[ident] = Entry(match.group(2))
        elif current is not None and line.startswith("C-"):
            rating = RATING.match(line)
            if rating is None:
                problems[ident] = f"{path}:{n}: cannot read the category line {line.strip()!r}"
                continue
            if not rating.group(1).startswith("E"):
                continue  # C-F1 / C-M1: the actor's own rating
            body = rating.group(2)
            body = body[:body.rfind("(")] if "(" in body else body
            tags = [category(t) for t in body.split(";") if t.strip()]
            for tag in tags:
                current.votes[tag] += 1 / len(tags) if vote_weight == "rater" else 1
    return entries, problems


def read_transcripts(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """({IEMOCAP id: transcript}, {IEMOCAP id: why unusable}) of one ``transcriptions/<dialog>.txt``;
    lines that are not turns (no id) are skipped, as every public reader does."""
    texts: dict[str, str] = {}
    problems: dict[str, str] = {}
    for n, line in enumerate(read_lines(path), 1):
        match = TRANSCRIPT.match(line)
        if match is not None:
            texts[match.group(1)] = " ".join(match.group(2).split())
        elif (ident := ANY_ID.match(line)) is not None:
            problems[ident.group(0)] = f"{path}:{n}: cannot read the transcript line {line.strip()!r}"
    return texts, problems


def prepare_session(session_dir: Path, number: int, vote_weight: str = "rater") -> DataDir:
    """The data dir of one ``Session<number>`` folder."""
    entries: dict[str, Entry] = {}
    texts: dict[str, str] = {}
    problems: dict[str, str] = {}
    evaluations = find(session_dir, "dialog/EmoEvaluation/*.txt")
    for path in evaluations:
        found, bad = read_evaluation(path, vote_weight)
        entries.update(found)
        problems.update(bad)
    for path in find(session_dir, "dialog/transcriptions/*.txt"):
        found, bad = read_transcripts(path)
        texts.update(found)
        for ident, why in bad.items():
            problems.setdefault(ident, why)
    wavs = {p.stem: p for p in find(session_dir, "sentences/wav/*/*.wav")}
    dialogs = {p.stem for p in evaluations}

    data = DataDir({name: {} for name in TABLES})
    for ident in sorted(set(entries) | set(wavs) | set(problems)):
        match = NATIVE_ID.match(ident)
        if match is None:
            log.warning("%s: %s is not an IEMOCAP utterance name, ignored", session_dir, ident)
            continue
        if int(match.group(1)) != number:
            log.warning("%s: %s belongs to session %s, not %d; ignored", session_dir, ident, match.group(1),
                        number)
            continue
        speaker = f"Ses0{number}{match.group(3)}"
        utt = f"{speaker}-{ident}"
        dialog = ident.rsplit("_", 1)[0]
        why = problems.get(ident)
        if why is None and ident not in wavs:
            why = f"no audio: {session_dir}/sentences/wav/{dialog}/{ident}.wav is missing"
        if why is None and ident not in entries:
            why = (f"no entry in {session_dir}/dialog/EmoEvaluation/{dialog}.txt" if dialog in dialogs
                   else f"no {session_dir}/dialog/EmoEvaluation/{dialog}.txt")
        if why is None and not entries[ident].votes:
            why = "no category from an external evaluator (C-E lines)"
        if why is None and ident not in texts:
            why = f"no line in {session_dir}/dialog/transcriptions/{dialog}.txt"
        if why is not None:
            data.rejected[utt] = " ".join(why.split())
            continue
        entry = entries[ident]
        total = sum(entry.votes.values())
        data["wav.scp"][utt] = str(wavs[ident].resolve())
        data["utt2spk"][utt] = speaker
        data["text"][utt] = texts[ident]
        data["utt2emo"][utt] = entry.label
        data["utt2dist"][utt] = format_dist({k: v / total for k, v in sorted(entry.votes.items())})
        data["utt2lang"][utt] = "en"
        data["utt2subset"][utt] = match.group(2)
    return data


def prepare(corpus_dir: Path | str, out_dir: Path | str | None = None, *, vote_weight: str = "rater",
            var: str = "IEMOCAP") -> dict[str, DataDir]:
    """``{"session1": DataDir, ...}`` for every ``Session<n>`` folder of the release, written to
    ``out_dir/session<n>`` when ``out_dir`` is given.  ``var`` names the setting in errors."""
    if vote_weight not in VOTE_WEIGHTS:
        raise ValueError(f"vote_weight must be one of {VOTE_WEIGHTS}, not {vote_weight!r}")
    root = locate(corpus_dir, "Session[1-5]", var, "IEMOCAP's Session1 ... Session5 (IEMOCAP_full_release)")
    sessions = {}
    for folder in sorted(d for d in root.glob("Session[1-5]") if d.is_dir()):
        number = int(folder.name[-1])
        data = prepare_session(folder, number, vote_weight)
        if not len(data) and not data.rejected:
            raise ValueError(f"{folder}: no utterance found (expected sentences/wav/<dialog>/<id>.wav and "
                             "dialog/EmoEvaluation/<dialog>.txt)")
        sessions[f"session{number}"] = data
    return finish(sessions, root, out_dir, "Session<n>/sentences/wav/<dialog>/<id>.wav")
