"""ESD (Emotional Speech Dataset, HLT Singapore): 10 Mandarin and 10 English speakers, 5 emotions.

Two layouts circulate (shared/corpora.md §7): the release, ``<spk>/<Emotion>/{train,evaluation,test}/
<id>.wav``, and a flat copy, ``<spk>/<Emotion>/<id>.wav``, sometimes under an extra folder.  The
standard split (per speaker and emotion: 300 train, 20 evaluation, 30 test) is read from the
folders when they are there; in the flat copy it is derived from the index (within each block of
350: 1-20 evaluation, 21-50 test, the rest train) and the log says so, since that rule is inferred
from example names, not from the release.

- Speaker = the 4 digits; the ESD id starts with them, so it is the utterance id unchanged.
- ``utt2emo`` is the emotion folder's name (``Angry Happy Neutral Sad Surprise``), checked against
  the transcript file's column (English, or Chinese for 0001-0010) and the index block.
- ``<spk>/<spk>.txt`` comes in gb2312, UTF-16, UTF-8 or latin-1 depending on the speaker, and some
  lines separate their fields with spaces instead of tabs: both are handled, and a line that still
  cannot be read rejects its utterance with the line.
- ``utt2lang`` is ``cmn`` for 0001-0010 and ``en`` for 0011-0020.
"""
from __future__ import annotations

import logging
import re
import unicodedata
from pathlib import Path

from local.data.corpora.files import find, finish, locate, read_lines
from local.data.kaldi import DataDir

log = logging.getLogger(__name__)

TABLES = ("wav.scp", "utt2spk", "text", "utt2emo", "utt2lang")
EMOTIONS = ("Neutral", "Angry", "Happy", "Sad", "Surprise")  # in the order of their index blocks
CHINESE = {"中立": "Neutral", "生气": "Angry", "快乐": "Happy", "伤心": "Sad", "惊喜": "Surprise"}
SPLITS = ("train", "evaluation", "test")
BLOCK = 350
ENCODINGS = ("utf-8-sig", "gb18030")  # then latin-1; UTF-16 is found by its BOM
ID = re.compile(r"^(\d{4})_(\d{6})$")


def split_of_index(index: int) -> str:
    offset = (index - 1) % BLOCK + 1
    return "evaluation" if offset <= 20 else "test" if offset <= 50 else "train"


def emotion_of_index(index: int) -> str | None:
    block = (index - 1) // BLOCK
    return EMOTIONS[block] if 0 <= block < len(EMOTIONS) else None


def read_transcripts(path: Path) -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
    """({ESD id: (transcript, emotion)}, {ESD id: why unusable}) of one ``<spk>.txt``."""
    lines: dict[str, tuple[str, str]] = {}
    problems: dict[str, str] = {}
    for n, line in enumerate(read_lines(path, ENCODINGS), 1):
        line = unicodedata.normalize("NFC", line).strip()
        if not line:
            continue
        fields = line.split("\t")
        if len(fields) < 3:  # spaces instead of tabs: the id first, the emotion last
            fields = line.split()
            fields = [fields[0], " ".join(fields[1:-1]), fields[-1]] if len(fields) >= 3 else fields
        ident = fields[0].strip()
        if not ID.match(ident):
            log.warning("%s:%d: no ESD id at the start of the line, ignored: %r", path, n, line)
            continue
        emotion = CHINESE.get(fields[-1].strip(), fields[-1].strip()) if len(fields) >= 3 else None
        if emotion not in EMOTIONS or not fields[1].strip():
            problems[ident] = f"{path}:{n}: cannot read the line {line!r}"
            continue
        lines[ident] = (" ".join(fields[1].split()), emotion)
    return lines, problems


def prepare(corpus_dir: Path | str, out_dir: Path | str | None = None, *,
            var: str = "ESD") -> dict[str, DataDir]:
    """``{"train", "evaluation", "test"}`` data dirs, written under ``out_dir`` when given."""
    root = locate(corpus_dir, "[0-9][0-9][0-9][0-9]/[0-9][0-9][0-9][0-9].txt", var,
                  "ESD's speaker folders 0001 ... 0020 (each with its <spk>.txt)")
    sets = {name: DataDir({t: {} for t in TABLES}) for name in SPLITS}
    derived = 0
    for spk_dir in sorted(d for d in root.glob("[0-9][0-9][0-9][0-9]") if d.is_dir()):
        speaker = spk_dir.name
        transcript = spk_dir / f"{speaker}.txt"
        lines, problems = read_transcripts(transcript) if transcript.is_file() else ({}, {})
        wavs = {p.stem: p for p in find(spk_dir, "*/**/*.wav")}
        for utt in sorted(set(wavs) | set(lines) | set(problems)):
            match = ID.match(utt)
            if match is None or match.group(1) != speaker:
                log.warning("%s: %s is not an utterance of speaker %s, ignored", spk_dir, utt, speaker)
                continue
            index = int(match.group(2))
            path = wavs.get(utt)
            folders = path.relative_to(spk_dir).parts[:-1] if path else ()
            if len(folders) == 2 and folders[1] in SPLITS:
                split = folders[1]
            else:
                split = split_of_index(index)
                derived += path is not None
            emotion = folders[0] if folders else emotion_of_index(index)
            why = problems.get(utt)
            if why is None and path is None:
                why = f"no audio: {utt}.wav is not under {spk_dir}"
            if why is None and utt not in lines:
                why = f"no line in {transcript}" if transcript.is_file() else f"no {transcript}"
            if why is None and len({emotion, lines[utt][1], emotion_of_index(index)}) > 1:
                why = (f"{path}: emotion folder {emotion}, {lines[utt][1]} in {transcript.name}, "
                       f"{emotion_of_index(index)} by its index: they must agree")
            data = sets[split]
            if why is not None:
                data.rejected[utt] = why
                continue
            data["wav.scp"][utt] = str(path.resolve())
            data["utt2spk"][utt] = speaker
            data["text"][utt] = lines[utt][0]
            data["utt2emo"][utt] = emotion
            data["utt2lang"][utt] = "cmn" if int(speaker) <= 10 else "en"
    if derived:
        log.warning("%s: %d utterances are in no train/evaluation/test folder: their split follows the index "
                    "(1-20 evaluation, 21-50 test, 51-350 train of each emotion), inferred, not released",
                    root, derived)
    return finish(sets, root, out_dir, "<spk>/<Emotion>[/<split>]/<spk>_NNNNNN.wav")
