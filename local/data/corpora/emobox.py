"""Any of EmoBox's 32 corpora, from EmoBox's own metadata (``data/<dataset>/``) and the user's downloads.

EmoBox (``emo-box/EmoBox``) ships, per corpus, a jsonl of every utterance, its folds
(``fold_<k>/<ds>_{train,test,valid}_fold_<k>.jsonl``), a ``label_map.json`` onto its common names, and
an STM file with speakers (shared/corpora.md §1).  The audio is the user's: ``wav`` fields start with
``downloads/<ds>/``, resolved against ``downloads`` (default: the EmoBox folder itself).

Parts: ``all`` and, per fold k, ``fold<k>_train``, ``fold<k>_test`` (and ``fold<k>_valid`` where
EmoBox has one); a recipe's ``corpus.folds`` combines them (local/data/corpora/sets.py).

What is not copied from EmoBox (§1.7):
- Speakers come from the STM file, except IEMOCAP's, whose ``spk`` is the dialog's prefix and not
  the speaker: there, the session and the letter of the id's last field.
- ``utt2emo`` is EmoBox's common name for the label (lower-cased: ``angry``, ``happy`` ...), through
  its ``label_map.json`` read case-insensitively (EmoDB's map says ``Neutral`` where the jsonl says
  ``neutral``); a label the map lacks is kept as it is, for the recipe's map to decide.
- ``utt2lang`` from the corpus' language below, not the STM's (``en`` for every corpus).
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Callable

from local.data.corpora.files import find, finish, locate, read_lines
from local.data.kaldi import DataDir

log = logging.getLogger(__name__)

# EmoBox's README, column Lang, as utt2lang codes (the keys of attributes.voices: ISO 639-1, cmn for
# Mandarin); None where a corpus mixes languages (ASVP-ESD, ESD: local/data/corpora/esd.py knows ESD's).
LANGUAGES = {
    "aesdd": "el", "ased": "am", "asvp-esd": None, "cafe": "fr", "casia": "cmn", "cremad": "en", "emns": "en",
    "emodb": "de", "emovdb": "en", "emovo": "it", "emozionalmente": "it", "enterface": "en", "esd": None,
    "iemocap": "en", "jl": "en", "m3ed": "cmn", "mead": "en", "meld": "en", "mer2023": "cmn", "mesd": "es",
    "msppodcast": "en", "oreau": "fr", "pavoque": "de", "polish": "pl", "ravdess": "en", "resd": "ru",
    "savee": "en", "shemo": "fa", "subesco": "bn", "tess": "en", "turev": "tr", "urdu": "ur",
}
FOLD_FILE = re.compile(r"^(?P<ds>.+?)_(?P<part>train|test|valid)_fold_?(?P<k>\d+)$")
IEMOCAP_ID = re.compile(r"^(?:iemocap-)?(Ses0[1-5])[MF]_\w+_([MF])\d{3}$")


def speaker_of(dataset: str, key: str, stm: dict[str, str]) -> str | None:
    if dataset == "iemocap":
        match = IEMOCAP_ID.match(key)
        return f"{match.group(1)}{match.group(2)}" if match else None
    return stm.get(key)


def read_stm(path: Path) -> dict[str, str]:
    """{key: speaker} of ``data.seg.wrd.stm`` (``key channel spk start end <…> emotion``)."""
    speakers = {}
    for line in read_lines(path):
        fields = line.split()
        if len(fields) >= 3 and not line.startswith(";;"):
            speakers[fields[0]] = fields[2]
    return speakers


def prepare(corpus_dir: Path | str, out_dir: Path | str | None = None, *, dataset: str,
            downloads: Path | str | None = None, var: str = "EMOBOX") -> dict[str, DataDir]:
    """The parts of EmoBox's ``dataset`` (``all``, ``fold<k>_train`` ...), written under ``out_dir``."""
    root = locate(corpus_dir, f"data/{dataset}/{dataset}.jsonl", var,
                  f"EmoBox's repository (data/{dataset}/{dataset}.jsonl)")
    meta = root / "data" / dataset
    label_file = meta / "label_map.json"
    label_map = ({str(k).lower(): str(v).lower() for k, v in json.loads(label_file.read_text()).items()}
                 if label_file.is_file() else {})
    stm_file = meta / "data.seg.wrd.stm"
    stm = read_stm(stm_file) if stm_file.is_file() else {}
    lang = LANGUAGES.get(dataset)
    if lang is None:
        log.warning("%s: %s; no utt2lang (stage 2 uses corpus.default_lang)", dataset,
                    "several languages" if dataset in LANGUAGES else "not one of EmoBox's 32 corpora known here")

    def resolve(wav: str) -> Path:
        relative = Path(wav)
        if downloads is not None and relative.parts[:1] == ("downloads",):
            return Path(downloads) / Path(*relative.parts[1:])
        return root / relative
    files = {"all": meta / f"{dataset}.jsonl"}
    for path in find(meta, "fold_*/*.jsonl"):
        match = FOLD_FILE.match(path.stem)
        if match and match.group("ds") == dataset:
            files[f"fold{int(match.group('k'))}_{match.group('part')}"] = path
    parts = {name: read_part(path, dataset, resolve, label_map, stm, lang) for name, path in files.items()}
    return finish(parts, root, out_dir, f"{meta}/{dataset}.jsonl with audio under {downloads or root}")


def read_part(path: Path, dataset: str, resolve: Callable[[str], Path], label_map: dict[str, str],
              stm: dict[str, str], lang: str | None) -> DataDir:
    """One jsonl of EmoBox as a data dir."""
    data = DataDir({t: {} for t in ("wav.scp", "utt2spk", "utt2emo") + (("utt2lang",) if lang else ())})
    for n, line in enumerate(read_lines(path), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            key, wav, emo = item["key"], item["wav"], str(item["emo"])
        except (ValueError, KeyError, TypeError) as e:
            found = re.search(r'"key"\s*:\s*"([^"]+)"', line)
            if found is None:
                log.warning("%s:%d: no key in the line, ignored", path, n)
            else:
                data.rejected[found.group(1)] = f"{path}:{n}: cannot read the line ({type(e).__name__}: {e})"
            continue
        speaker = speaker_of(dataset, key, stm)
        if speaker is None:
            data.rejected[key] = f"{path}:{n}: no speaker for {key} (not in data.seg.wrd.stm)"
            continue
        utt = f"{speaker}-{key}"
        audio = resolve(wav)
        if not audio.is_file():
            data.rejected[utt] = f"no audio: {audio} (the wav of {path}:{n})"
            continue
        data["wav.scp"][utt] = str(audio.resolve())
        data["utt2spk"][utt] = speaker
        data["utt2emo"][utt] = label_map.get(emo.lower(), emo)
        if lang:
            data["utt2lang"][utt] = lang
    return data
