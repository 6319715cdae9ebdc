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

Run from egs/mini_lime (run.sh does):  python prepare.py [hydra overrides]
"""
from __future__ import annotations

import csv
import logging
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from local.data.kaldi import DataDir, format_dist
from local.data.synth import (EspeakEngine, Rendering, Voice, lime_subset, simulate_votes,
                              stable_seed, synthesize_all)
from local.utils.hydra import entry_point

log = logging.getLogger("prepare")


def read_texts(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        rows = [line for line in f if not line.startswith("#")]
    return list(csv.DictReader(rows, delimiter="\t"))


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
                        extra={"split": split, "subset": lime_subset(t["lean"], emotion), "dist": dist}))
    return renderings


@entry_point
def main(cfg: DictConfig) -> None:
    corpus = cfg.corpus
    renderings = plan(corpus)
    start = time.time()
    audio = synthesize_all(renderings, EspeakEngine(), Path(corpus.db) / "wav", nj=cfg.nj)
    log.info("audio of %d utterances ready in %.1f s (nj=%d)", len(renderings), time.time() - start, cfg.nj)

    for split in SPLITS:
        data = DataDir({name: {} for name in ("wav.scp", "utt2spk", "text", "utt2emo", "utt2dist",
                                              "utt2lang", "utt2dur", "utt2int", "utt2subset")})
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
        data.save(Path(cfg.data_root) / split)
        log.info("wrote %s/%s: %d utterances", cfg.data_root, split, len(data))


if __name__ == "__main__":
    main()
