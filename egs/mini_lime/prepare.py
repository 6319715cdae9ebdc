"""Stage 0 of mini_lime: synthesise the corpus and write data/{train,dev,test}.

Each text of conf/texts.tsv is rendered in every emotion × intensity by the
speakers of conf/corpus/mini_lime.yaml that read it.  The split holds out both
speakers and texts, so a model that memorised words or voices cannot pass the
test set, and dev, which picks checkpoints and settings, asks the same of them:

    train: train speakers × train texts
    dev:   dev speakers   × all texts       (unseen voices; heldout texts unseen too)
    test:  test speakers  × all texts       (the same, with two other unseen voices)

A dev set of the train speakers would reward what fits their voices, which
is exactly what does not carry over to the test speakers.  Train speakers do
not read the heldout texts: those are heard with unseen voices only.

Every utterance also gets the SQA pairs of its text (conf/sqa.tsv -> utt2qa): the
multitask system asks questions about what is said, which depends on the text alone.

Run from egs/mini_lime (run.sh does):  python prepare.py [hydra overrides]
"""
from __future__ import annotations

import csv
import logging
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from local.data.kaldi import DataDir, format_dist, format_qa
from local.data.synth import (EspeakEngine, Rendering, Voice, lime_subset, simulate_votes,
                              stable_seed, synthesize_all)
from local.utils.hydra import entry_point

log = logging.getLogger("prepare")


def read_texts(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        rows = [line for line in f if not line.startswith("#")]
    return list(csv.DictReader(rows, delimiter="\t"))


def text_lines(path: str) -> dict[str, int]:
    """Text id -> its line in texts.tsv, for errors that point there."""
    lines, header = {}, True
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip() or line.startswith("#"):
                continue
            if not header:
                lines[line.split("\t", 1)[0]] = lineno
            header = False
    return lines


def read_sqa(path: str, texts_path: str) -> dict[str, list[tuple[str, str]]]:
    """Text id -> its (question, answer) pairs, from an ``id<TAB>question<TAB>answer`` file (``#`` lines
    are comments).  Every text must have a pair and every pair a text: a text without questions would
    be an utterance the SQA task never sees, and an id that is no text is a typo that loses its pairs."""
    texts = text_lines(texts_path)
    pairs: dict[str, list[tuple[str, str]]] = {}
    header = None
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.split("\t")
            if header is None:
                if fields != ["id", "question", "answer"]:
                    raise ValueError(f"{path}:{lineno}: the header must be 'id<TAB>question<TAB>answer'")
                header = fields
                continue
            if len(fields) != 3 or not all(x.strip() for x in fields):
                raise ValueError(f"{path}:{lineno}: expected three non-empty tab-separated fields "
                                 f"(id, question, answer), got {len(fields)}")
            text_id, question, answer = (x.strip() for x in fields)
            if text_id not in texts:
                raise ValueError(f"{path}:{lineno}: '{text_id}' is not a text id of {texts_path}")
            pairs.setdefault(text_id, []).append((question, answer))
    lacking = [t for t in texts if t not in pairs]
    if lacking:
        more = f" (and {len(lacking) - 1} other text(s))" if len(lacking) > 1 else ""
        raise ValueError(f"{path}: no question/answer pair for the text '{lacking[0]}' "
                         f"({texts_path}:{texts[lacking[0]]}){more}")
    return pairs


def qa_table(renderings: list[Rendering], pairs: dict[str, list[tuple[str, str]]]) -> dict[str, str]:
    """utt2qa of the renderings: each utterance gets the pairs of the text it reads."""
    return {r.utt: format_qa(pairs[r.extra["text_id"]]) for r in renderings}


SPLITS = ("train", "dev", "test")
TEXT_SPLITS = ("train", "heldout")


def plan(corpus: DictConfig) -> list[Rendering]:
    """Every utterance of the corpus with its labels, decided before any audio exists."""
    for spk, s in corpus.speakers.items():
        if s.split not in SPLITS:
            raise ValueError(f"corpus.speakers.{spk}.split is '{s.split}', not one of {', '.join(SPLITS)}")
    texts = read_texts(corpus.texts)
    for t in texts:
        if t["split"] not in TEXT_SPLITS:
            raise ValueError(f"{corpus.texts}: text '{t['id']}' has split '{t['split']}', "
                             f"not one of {', '.join(TEXT_SPLITS)}")
    voices = {spk: Voice(spk=spk, voices={"en": f"{s.en}+{s.variant}", "cmn": f"cmn-latn-pinyin+{s.variant}"},
                         pitch_base=s.pitch, speed_wpm=s.speed)
              for spk, s in corpus.speakers.items()}
    renderings = []
    for spk, voice in voices.items():
        split = corpus.speakers[spk].split
        for t in texts:
            if split == "train" and t["split"] != "train":
                continue  # heldout texts are heard with unseen voices only
            for emotion in corpus.emotions:
                for intensity in corpus.intensities:
                    utt = f"{spk}-{t['id']}-{emotion}-{intensity}"
                    seed = stable_seed(corpus.seed, utt)
                    rng = np.random.default_rng(seed + 1)  # the rendering itself uses `seed`
                    blend = None
                    if emotion != "neutral" and rng.random() < corpus.blend_prob:
                        other = rng.choice([e for e in corpus.emotions if e != emotion])
                        blend = (str(other), float(rng.uniform(*corpus.blend_weight)))
                    snr = float(rng.uniform(*corpus.snr_db)) if rng.random() < corpus.noise_prob else None
                    dist = simulate_votes(emotion, intensity, rng, blend=blend, n_range=tuple(corpus.annotators))
                    renderings.append(Rendering(
                        utt=utt, voice=voice, text=t["text"], lang=t["lang"], emotion=emotion,
                        intensity=intensity, seed=seed, blend=blend, snr_db=snr,
                        noise_exponent=float(rng.choice([0.0, 1.0, 2.0])),
                        extra={"split": split, "subset": lime_subset(t["lean"], emotion), "dist": dist,
                               "text_id": t["id"]}))
    return renderings


@entry_point
def main(cfg: DictConfig) -> None:
    corpus = cfg.corpus
    renderings = plan(corpus)
    utt2qa = qa_table(renderings, read_sqa(corpus.sqa, corpus.texts)) if corpus.get("sqa") else None
    start = time.time()
    audio = synthesize_all(renderings, EspeakEngine(), Path(corpus.db) / "wav", nj=cfg.nj)
    log.info("audio of %d utterances ready in %.1f s (nj=%d)", len(renderings), time.time() - start, cfg.nj)

    for split in SPLITS:
        data = DataDir({name: {} for name in ("wav.scp", "utt2spk", "text", "utt2emo", "utt2dist",
                                              "utt2lang", "utt2dur", "utt2int", "utt2subset")})
        if utt2qa is not None:
            data["utt2qa"] = {}
        for r in renderings:
            if r.extra["split"] != split:
                continue
            path, dur = audio[r.utt]
            data["wav.scp"][r.utt] = path
            data["utt2spk"][r.utt] = r.voice.spk
            data["text"][r.utt] = r.text
            data["utt2emo"][r.utt] = r.emotion
            data["utt2dist"][r.utt] = format_dist(r.extra["dist"])
            data["utt2lang"][r.utt] = r.lang
            data["utt2dur"][r.utt] = f"{dur:.3f}"
            data["utt2int"][r.utt] = r.intensity
            data["utt2subset"][r.utt] = r.extra["subset"]
            if utt2qa is not None:
                data["utt2qa"][r.utt] = utt2qa[r.utt]
        data.save(Path(cfg.data_root) / split)
        log.info("wrote %s/%s: %d utterances", cfg.data_root, split, len(data))


if __name__ == "__main__":
    main()
