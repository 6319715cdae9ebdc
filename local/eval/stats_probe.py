"""What encoder outputs say about emotion, by logistic regression on utterance statistics.

The audio LLM has to find the emotion in the frames its encoders hand over.  Before blaming the
LLM (or its training), ask the frames: the mean and standard deviation over time of each output
dimension, and the standard deviation of its frame-to-frame change (how fast it moves: speaking
rate, pitch movement), standardised, into a multinomial logistic regression trained on the train set and
scored (UA) on it and on each test set.  ``log_mel`` (the spectrogram Whisper reads) is the
reference for what the audio holds at this level of summary; ``whisper``, ``e2v`` (frames) and
``e2v_utt`` (the utterance embedding, as it is) are the model config's encoders.  With
``per_speaker`` each feature has a second row, its statistics standardised per speaker first (what
``model.feature_norm: speaker`` does to the frames): how much of what a classifier misses on unseen
speakers is their register.

Writes ``<out_dir>/results.md`` and ``results.json`` ({feature: {set: {"ua", "wa", "f1", "n"}}}).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from local.data.labels import EMOTIONS
from local.eval.decode import DataDirBatches
from local.eval.metrics import classification_scores
from local.models.feature_norm import MIN_SPEAKER_UTTS, MIN_STD
from local.utils.atomic import write_text_atomic

log = logging.getLogger(__name__)

FEATURES = ("log_mel", "whisper", "e2v", "e2v_utt")
Summaries = Callable[[torch.Tensor], dict[str, np.ndarray]]  # one waveform [samples] -> {feature: vector}


def functionals(frames: torch.Tensor) -> np.ndarray:
    """[T, D] -> [3D]: mean and standard deviation over time, and the standard deviation of the deltas."""
    delta = frames[1:] - frames[:-1] if len(frames) > 1 else torch.zeros_like(frames)
    return torch.cat([frames.mean(0), frames.std(0, unbiased=False), delta.std(0, unbiased=False)]).double().numpy()


def summaries(model_cfg: DictConfig, names) -> Summaries:
    """The statistics of each feature of a waveform, from the encoders ``model_cfg`` builds (frozen,
    eval mode), each encoder run once per waveform."""
    unknown = set(names) - set(FEATURES)
    if unknown:
        raise ValueError(f"stats_probe.features: unknown {sorted(unknown)} (known: {', '.join(FEATURES)})")
    whisper = instantiate(model_cfg.encoder, _convert_="all").eval() if {"log_mel", "whisper"} & set(names) else None
    e2v = instantiate(model_cfg.e2v, _convert_="all").eval() if {"e2v", "e2v_utt"} & set(names) else None

    def summarise(wav: torch.Tensor) -> dict[str, np.ndarray]:
        batch = (wav[None], torch.tensor([len(wav)]))
        out = {}
        if "log_mel" in names:
            mel, n = whisper.log_mel(*batch)
            out["log_mel"] = functionals(mel[0, :, :int(n[0])].T)
        if "whisper" in names:
            frames, n = whisper.encode(*batch)
            out["whisper"] = functionals(frames[0, :int(n[0])])
        if e2v is not None:
            e = e2v.extract(*batch)
            out["e2v"] = functionals(e["frames"][0, :int(e["frame_lengths"][0])])
            out["e2v_utt"] = e["utterance"][0].double().numpy()
        return {n: out[n] for n in names}

    return summarise


@torch.no_grad()
def featurise(data_dir: Path, summarise: Summaries) -> tuple[dict[str, np.ndarray], list[str], list[str]]:
    """({feature: [N, F]}, labels, speakers) over the labelled utterances of a data dir (``segments``
    respected; one whose audio cannot be read is logged and left out, as stage 9 does)."""
    rows: list[dict[str, np.ndarray]] = []
    labels, speakers = [], []
    for batch in DataDirBatches(data_dir, batch_size=1):
        label = batch["meta"][0].get("label")
        if label is None:
            continue
        rows.append(summarise(batch["wav"][0, :int(batch["wav_lens"][0])]))
        labels.append(label)
        speakers.append(batch["meta"][0]["spk"])
    if not labels:
        raise ValueError(f"{data_dir}: no utterance has a label (utt2emo) and readable audio")
    return {n: np.stack([r[n] for r in rows]) for n in rows[0]}, labels, speakers


def per_speaker(x: np.ndarray, speakers: list[str]) -> np.ndarray:
    """Each speaker's rows standardised by that speaker's mean and deviation (the model's ``feature_norm:
    speaker``, on the statistics); a speaker with fewer than MIN_SPEAKER_UTTS rows by the whole set's."""
    out = np.empty_like(x)
    speakers = np.asarray(speakers)
    for spk in np.unique(speakers):
        rows = speakers == spk
        ref = x[rows] if rows.sum() >= MIN_SPEAKER_UTTS else x
        out[rows] = (x[rows] - ref.mean(0)) / np.maximum(ref.std(0), MIN_STD)
    return out


def run(cfg: DictConfig) -> dict:
    opts = cfg.stats_probe
    features = list(opts.features)
    summarise = summaries(cfg.model, features)
    sets = {"train": Path(cfg.data_root) / cfg.train_set,
            **{Path(t).name: Path(cfg.data_root) / t for t in cfg.test_sets}}
    feats = {}
    for name, path in sets.items():
        feats[name] = featurise(path, summarise)
        log.info("%s: statistics of %d utterances", path, len(feats[name][1]))
    results: dict = {}
    views = {f: (f, lambda x, spk: x) for f in features}
    if opts.get("per_speaker"):
        views.update({f"{f} per speaker": (f, per_speaker) for f in features})
    x_train, y_train, spk_train = feats["train"]
    for row, (feature, view) in views.items():
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=opts.C, max_iter=opts.max_iter))
        clf.fit(view(x_train[feature], spk_train), y_train)
        results[row] = {}
        for name, (x, y, spk) in feats.items():
            scores = classification_scores(y, list(clf.predict(view(x[feature], spk))), EMOTIONS)
            results[row][name] = {k: scores[k] for k in ("ua", "wa", "f1", "n")}
    out = Path(opts.out_dir)
    write_text_atomic(out / "results.json", json.dumps(results, indent=2) + "\n")
    header = ["features", *(f"UA {s}" for s in sets)]
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * len(sets) + "|"]
    lines += ["| " + " | ".join([f, *(f"{100 * results[f][s]['ua']:.1f}" for s in sets)]) + " |" for f in results]
    markdown = "\n".join(lines) + "\n"
    write_text_atomic(out / "results.md", markdown)
    print(markdown, end="")
    return results
