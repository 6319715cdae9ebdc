"""Emo-Emilia (C²SER's test set): 1,400 utterances of Emilia, 100 per emotion and language, from
``Emo-Emilia-ALL.jsonl`` (shared/corpora.md §9).

Each line is ``{"index", "emotion", "wav", "text"}``; ``wav`` is relative to the repository root
(``./Emo-Emilia/wav/<index>.wav``).  Where the audio lies in other copies is not documented, so a
``wav`` that is not at its path is looked up by file name anywhere below the root.

- Speaker = the first 16 characters of the index (``ZH_B00090_S00350``, Emilia's convention, as
  far as public copies show); the index starts with it, so it is the utterance id unchanged.
- ``utt2lang`` from the index' prefix (``ZH`` → ``cmn``, ``EN`` → ``en``); ``utt2emo`` the released
  name (``angry happy fearful surprised neutral sad disgusted``); no soft labels (one verified label).
- One data dir, ``test``: Emo-Emilia is a test set only.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from local.data.corpora.files import find, finish, locate, read_lines
from local.data.kaldi import DataDir

log = logging.getLogger(__name__)

LANGS = {"ZH": "cmn", "EN": "en"}
INDEX = re.compile(r"^(ZH|EN)_B\d+_S\d+_W\d+$")
ANY_INDEX = re.compile(r'"index"\s*:\s*"([^"]+)"')


def prepare(corpus_dir: Path | str, out_dir: Path | str | None = None, *,
            var: str = "EMO_EMILIA") -> dict[str, DataDir]:
    """``{"test": DataDir}``, written to ``out_dir/test`` when given."""
    root = locate(corpus_dir, "**/Emo-Emilia-ALL.jsonl", var, "Emo-Emilia/Emo-Emilia-ALL.jsonl and its wav/",
                  depth=0)
    jsonl = find(root, "**/Emo-Emilia-ALL.jsonl")[0]
    by_name = {p.name: p for p in find(root, "**/*.wav")}
    data = DataDir({t: {} for t in ("wav.scp", "utt2spk", "text", "utt2emo", "utt2lang")})
    for n, line in enumerate(read_lines(jsonl), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            index, emotion, wav = item["index"], item["emotion"], item["wav"]
        except (ValueError, KeyError, TypeError) as e:
            found = ANY_INDEX.search(line)
            if found is None:
                log.warning("%s:%d: no index in the line, ignored: %r", jsonl, n, line)
            else:
                data.rejected[found.group(1)] = f"{jsonl}:{n}: cannot read the line ({type(e).__name__}: {e})"
            continue
        if not INDEX.match(index):
            data.rejected[index] = f"{jsonl}:{n}: {index!r} is not an Emo-Emilia index (ZH_Bnnnnn_Snnnnn_Wnnnnnn)"
            continue
        path = next((p for p in (jsonl.parent.parent / wav, jsonl.parent / wav) if p.is_file()),
                    by_name.get(Path(wav).name))
        if path is None:
            data.rejected[index] = f"no audio: {wav} (of {jsonl}:{n}) is not under {root}"
            continue
        data["wav.scp"][index] = str(path.resolve())
        data["utt2spk"][index] = index[:16]
        data["text"][index] = " ".join(str(item.get("text", "")).split())
        data["utt2emo"][index] = emotion
        data["utt2lang"][index] = LANGS[index[:2]]
    return finish({"test": data}, root, out_dir, f"the wavs that {jsonl} names")
