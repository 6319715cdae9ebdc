"""Stage 5: pre-train Emotion2Vec-S (or, with ``lambda_cate=0``, Emotion2Vec-F) on the stage-4 shards.

The stage builds the student (from scratch with a seeded initialisation, or
from an official checkpoint for continued pre-training, keeping the
checkpoint's decoder and EMA teacher when it has them), wraps it in
:class:`~local.models.e2v_pretrain.Emotion2VecPretrainer` and hands it to the
shared trainer.  ``exp_dir`` gets the trainer's files plus two models in the
:meth:`~local.models.emotion2vec_s.Emotion2VecS.save_pretrained` format:

``init/``   the student before training: the "untrained initialisation" row
            of the linear-probe table (the same ``init_seed`` gives the same
            weights to every run, with or without L_cate)
``model/``  the student after training, what later stages load

Semi-supervised data: an utterance without a label (no ``utt2emo`` entry, or
"unknown") takes part in every loss but L_cate.  ``label_fraction`` < 1 hides
the labels of all but a seeded subset of the training utterances, to
simulate a partly labelled corpus.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import fields, replace
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from local.data.audio import SAMPLE_RATE
from local.data.loader import ShardLoader
from local.data.shards import load_manifest
from local.models.e2v_pretrain import (Emotion2VecPretrainer, PretrainConfig, decoder_shape, ema_decay,
                                       official_decoder_state, official_teacher_state)
from local.models.emotion2vec_s import Emotion2VecConfig, Emotion2VecS, load_emotion2vec
from local.train.checkpoint import full_state_dict
from local.train.loop import Trainer
from local.utils.distributed import on_main_process
from local.train.runtime import seed_everything

log = logging.getLogger(__name__)

UNLABELLED = ("", "unknown")


def objective_config(opts: Mapping) -> PretrainConfig:
    """The :class:`PretrainConfig` fields of the stage section (the other keys are the stage's own)."""
    names = {f.name for f in fields(PretrainConfig)}
    return PretrainConfig.from_dict({k: v for k, v in opts.items() if k in names})


def build_pretrainer(init: str, size: str | None, objective: PretrainConfig, init_seed: int,
                     model_overrides: Mapping | None = None) -> Emotion2VecPretrainer:
    """Student + teacher + decoder: ``init`` "scratch" (the ``size`` preset with ``model_overrides``,
    seeded by ``init_seed``) or a checkpoint path (see :func:`load_emotion2vec`)."""
    seed_everything(init_seed)
    if init == "scratch":
        config = replace(Emotion2VecConfig.preset(size or "base"), **dict(model_overrides or {}))
        return Emotion2VecPretrainer(Emotion2VecS(config), objective)
    if model_overrides:
        raise ValueError("model overrides apply to init=scratch only; a checkpoint brings its architecture")
    student, report = load_emotion2vec(init, size)
    embed_dim = student.config.embed_dim
    decoder = official_decoder_state(report.pretraining_state)
    if decoder:
        shape = decoder_shape(decoder, embed_dim)
        changed = {k: v for k, v in shape.items() if getattr(objective, k) != v}
        if changed:
            log.info("%s: keeping the checkpoint's decoder, whose shape %s replaces the configured one", init,
                     changed)
        objective = replace(objective, **shape)
    else:
        log.info("%s has no pre-training decoder: starting a fresh one", init)
    teacher = official_teacher_state(report.pretraining_state, student)
    log.info("%s: teacher %s", init, f"from the checkpoint's EMA ({len(teacher)} tensors)" if teacher
             else "copied from the student")
    return Emotion2VecPretrainer(student, objective, teacher_state=teacher, decoder_state=decoder)


def labelled_subset(utts: Iterable[str], fraction: float, seed: int) -> set[str] | None:
    """A seeded ``fraction`` of ``utts`` whose labels are used (None: all of them)."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"label_fraction must be in [0, 1], not {fraction}")
    if fraction == 1:
        return None
    utts = sorted(utts)
    order = np.random.default_rng(seed).permutation(len(utts))
    return {utts[i] for i in order[:round(fraction * len(utts))]}


def label_ids(batch: Mapping, labelled: set[str] | None) -> torch.Tensor:
    """Class ids of a batch's utterances for L_cate: equal labels get equal ids, unlabelled ones -1."""
    names = []
    for utt, meta in zip(batch["utts"], batch["meta"]):
        label = str(meta.get("label") or "")
        names.append(None if label in UNLABELLED or (labelled is not None and utt not in labelled) else label)
    ids = {name: i for i, name in enumerate(sorted({n for n in names if n is not None}))}
    return torch.tensor([ids.get(name, -1) if name is not None else -1 for name in names], dtype=torch.long)


def random_crop(wav: torch.Tensor, lengths: torch.Tensor, max_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each utterance longer than ``max_samples`` cut to a random window of that length (data2vec's
    ``max_sample_size``); the batch is re-padded to its new longest row."""
    cropped = lengths.clamp(max=max_samples)
    out = wav.new_zeros(wav.shape[0], int(cropped.max()))
    for row, (full, n) in enumerate(zip(lengths.tolist(), cropped.tolist())):
        start = int(torch.randint(0, full - n + 1, ()))
        out[row, :n] = wav[row, start:start + n]
    return out, cropped


def make_step_fn(labelled: set[str] | None, crop_samples: int | None = None):
    def step_fn(model, batch):
        wav, lengths = batch["wav"], batch["wav_lens"]
        if crop_samples:
            wav, lengths = random_crop(wav, lengths, crop_samples)
        labels = label_ids(batch, labelled).to(wav.device)
        return model(wav, lengths, labels)
    return step_fn


def save_model_dir(model: Emotion2VecS, directory: Path, state: dict | None = None) -> None:
    """``save_pretrained`` into a temp dir, then swap it in, so ``directory`` is always a whole model;
    ``state``: its state dict gathered beforehand (FSDP shards), by default the model's own."""
    tmp, old = directory.with_name(f".{directory.name}.tmp"), directory.with_name(f".{directory.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    model.save_pretrained(tmp, state)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def shard_loader(shard_dir: str, loader_opts: Mapping, seed: int, shuffle: bool) -> ShardLoader:
    return ShardLoader(shard_dir, seed=seed, shuffle=shuffle, **dict(loader_opts))


def run(cfg: DictConfig, fingerprint: str | None = None) -> dict:
    """Pre-train as ``cfg.pretrain`` says (resuming from ``exp_dir`` a run of the same ``fingerprint``); return
    the last logged metrics."""
    opts = cfg.pretrain
    exp_dir = Path(opts.exp_dir)
    objective = objective_config(opts)
    model = build_pretrainer(opts.init, opts.size, objective, opts.init_seed,
                             OmegaConf.to_container(opts.model, resolve=True))
    exp_dir.mkdir(parents=True, exist_ok=True)
    on_main_process(lambda: save_model_dir(model.student, exp_dir / "init"))

    loader_opts = OmegaConf.to_container(opts.loader, resolve=True)
    train = shard_loader(opts.train_shards, loader_opts, cfg.seed, shuffle=True)
    valid = shard_loader(opts.valid_shards, loader_opts, cfg.seed, shuffle=False) if opts.valid_shards else None
    labelled = labelled_subset(load_manifest(opts.train_shards)["utts"], opts.label_fraction, cfg.seed)
    if labelled is not None:
        log.info("label_fraction %.3g: L_cate uses the labels of %d training utterances", opts.label_fraction,
                 len(labelled))

    trainer_cfg = OmegaConf.merge(cfg.trainer, opts.trainer, {"exp_dir": str(exp_dir)})
    crop = round(opts.crop_seconds * SAMPLE_RATE) if opts.crop_seconds else None
    trainer = Trainer(model, make_step_fn(labelled, crop), trainer_cfg, run_config=cfg, fingerprint=fingerprint)

    def update_teacher(optimizer, args, kwargs):
        # On resume, torch.distributed.checkpoint initialises the empty optimizer with a zero-lr
        # step while trainer.step is still 0 and the loaded teacher has had its updates: that is
        # not a training step, and moving the teacher there would make the resume inexact.
        if trainer.step >= int(model.ema_updates):
            model.update_teacher()

    trainer.optimizer.register_step_post_hook(update_teacher)
    metrics = trainer.fit(train, valid)
    whole = full_state_dict(trainer.module)  # every rank: under FSDP this gathers the shards
    student = {k[len("student."):]: v for k, v in whole.items() if k.startswith("student.")}
    on_main_process(lambda: save_model_dir(model.student, exp_dir / "model", student))
    decay = ema_decay(int(model.ema_updates), model.config.ema_decay, model.config.ema_end_decay,
                      model.config.ema_anneal_steps)
    log.info("pre-trained %s for %d steps (teacher decay now %.6f): %s", exp_dir, trainer.step, decay,
             exp_dir / "model")
    return metrics
