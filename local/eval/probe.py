"""Linear-probe evaluation of frozen encoders, EmoBox style (C²SER §V-A, Table V).

EmoBox's downstream model on frozen frame features of the encoder's last
layer: a uniform layer norm (no parameters), Linear to ``hidden``, ReLU, mean
over the valid frames, Linear to the classes.  It is trained with
cross-entropy on the training utterances; the epoch with the best
unweighted accuracy on the validation utterances is kept (the trainer's
``best.pt``) and scored on the test utterances: UA, WA, macro-F1 from
:mod:`local.eval.metrics`.

Protocols:

``split``  the recipe's sets: train_set / dev_set / each of test_sets.
``kfold``  k speaker-disjoint folds over the utterances of all those sets
           (EmoBox's leave-speakers-out cross-validation): fold i tests on its
           speakers and trains on the others' utterances, of which a seeded,
           label-stratified ``dev_fraction`` validates (C²SER uses 20 %).
``folds``  given folds: a list of {train, dev, test} data-dir names; dev may
           be null (then ``dev_fraction`` of train validates).

Files under ``out_dir``: ``results.md``, ``results.json``, ``feats/<encoder>/<set>/``
(the frozen features) and ``runs/<encoder>/<fold>/seed<N>/`` (the trainer's
files and ``hyp``, the test predictions as a Kaldi table).

Each (encoder, fold) is trained with every seed in ``seeds``; a table row is
the mean (± standard deviation) over folds and seeds.  Probe runs always
start afresh: one takes seconds, and a leftover checkpoint from other
features would otherwise be resumed.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from sklearn.model_selection import GroupKFold, train_test_split
from torch import Tensor, nn

from local.data.kaldi import read_table, write_table
from local.data.labels import in_core_order
from local.eval.metrics import classification_scores
from local.models.e2v_features import model_fingerprint, write_features
from local.models.emotion2vec_s import load_emotion2vec
from local.train.checkpoint import load_weights
from local.train.loop import Trainer
from local.train.runtime import seed_everything

log = logging.getLogger(__name__)

METRICS = ("ua", "wa", "f1")


class ProbeHead(nn.Module):
    """layer norm → Linear → ReLU → masked mean over frames → Linear (EmoBox's downstream model)."""

    def __init__(self, dim: int, num_classes: int, hidden: int = 256):
        super().__init__()
        self.hidden = nn.Linear(dim, hidden)
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, feats: Tensor, lengths: Tensor) -> Tensor:
        valid = torch.arange(feats.shape[1], device=feats.device)[None, :] < lengths[:, None]
        h = F.relu(self.hidden(F.layer_norm(feats, feats.shape[-1:])))
        h = (h * valid[..., None]).sum(1) / lengths[:, None]
        return self.out(h)


@dataclass
class Examples:
    """Utterances of one part of a fold, with their frame features [T, D] and labels."""
    utts: list[str]
    frames: list[np.ndarray]
    labels: list[str]

    def subset(self, utts: Sequence[str]) -> "Examples":
        index = {u: i for i, u in enumerate(self.utts)}
        return Examples(list(utts), [self.frames[index[u]] for u in utts], [self.labels[index[u]] for u in utts])


def load_examples(feat_dir: Path | str, utt2emo: Mapping[str, str]) -> Examples:
    """The utterances of a feature dir (:mod:`local.models.e2v_features`) that have a label."""
    feat_dir = Path(feat_dir)
    table = read_table(feat_dir / "frames.scp")
    utts = [u for u in table if u in utt2emo]
    return Examples(utts, [np.load(feat_dir / table[u]) for u in utts], [utt2emo[u] for u in utts])


def concat(parts: Sequence[Examples]) -> Examples:
    return Examples([u for p in parts for u in p.utts], [f for p in parts for f in p.frames],
                    [label for p in parts for label in p.labels])


class Batches:
    """Padded batches of :class:`Examples`, reshuffled per epoch from (seed, epoch); resumable like ShardLoader."""

    def __init__(self, data: Examples, label_list: Sequence[str], batch_size: int, shuffle: bool, seed: int = 0):
        self.data, self.batch_size, self.shuffle, self.seed = data, batch_size, shuffle, seed
        self.label_index = {label: i for i, label in enumerate(label_list)}
        self.epoch = self.position = 0

    def __len__(self) -> int:
        return -(-len(self.data.utts) // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.position = epoch, 0

    def _batch(self, index: np.ndarray) -> dict:
        frames = [torch.from_numpy(self.data.frames[i]) for i in index]
        return {"utts": [self.data.utts[i] for i in index],
                "feats": nn.utils.rnn.pad_sequence(frames, batch_first=True),
                "lengths": torch.tensor([len(f) for f in frames]),
                "labels": torch.tensor([self.label_index[self.data.labels[i]] for i in index])}

    def __iter__(self) -> Iterator[dict]:
        if self.position >= len(self):
            self.set_epoch(self.epoch + 1)
        n = len(self.data.utts)
        order = np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle else np.arange(n)
        while self.position < len(self):
            start = self.position * self.batch_size
            self.position += 1
            yield self._batch(order[start:start + self.batch_size])
        self.set_epoch(self.epoch + 1)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]


def _step(model, batch):
    logits = model(batch["feats"], batch["lengths"])
    return F.cross_entropy(logits, batch["labels"]), {}


@torch.no_grad()
def predict(model: nn.Module, batches: Batches, label_list: Sequence[str]) -> list[str]:
    """Arg-max class name of every utterance, in the order of ``batches.data`` (not shuffled)."""
    model.eval()
    device = next(model.parameters()).device
    hyps = []
    for batch in batches:
        logits = model(batch["feats"].to(device), batch["lengths"].to(device))
        hyps += [label_list[i] for i in logits.argmax(-1).tolist()]
    return hyps


def train_probe(train: Examples, dev: Examples, label_list: Sequence[str], exp_dir: Path | str,
                trainer_cfg: Mapping, hidden: int = 256, batch_size: int = 32, seed: int = 0) -> ProbeHead:
    """Train a :class:`ProbeHead` with the shared trainer; return it with the weights of the best dev UA."""
    exp_dir = Path(exp_dir)
    shutil.rmtree(exp_dir, ignore_errors=True)
    seed_everything(seed)
    model = ProbeHead(train.frames[0].shape[-1], len(label_list), hidden)
    loader = Batches(train, label_list, batch_size, shuffle=True, seed=seed)
    dev_batches = Batches(dev, label_list, batch_size, shuffle=False)

    def valid_fn(module, batches):
        return {"ua": classification_scores(dev.labels, predict(module, batches, label_list), label_list)["ua"]}

    cfg = {**trainer_cfg, "exp_dir": str(exp_dir), "seed": seed, "valid_every": len(loader),
           "best_metric": "valid_ua", "best_mode": "max"}
    Trainer(model, _step, cfg).fit(loader, dev_batches, valid_fn)
    load_weights(exp_dir / "checkpoints" / "best.pt", model)
    return model


def label_list_of(*parts: Examples) -> list[str]:
    """The classes present, in the order of the core label list (others after it, sorted)."""
    return in_core_order({label for part in parts for label in part.labels})


def split_dev(train: Examples, fraction: float, seed: int) -> tuple[Examples, Examples]:
    """(train, dev): a seeded, label-stratified ``fraction`` of ``train`` for validation."""
    rest, dev = train_test_split(train.utts, test_size=fraction, random_state=seed, stratify=train.labels)
    return train.subset(sorted(rest)), train.subset(sorted(dev))


def kfold(data: Examples, spk_of: Mapping[str, str], k: int, dev_fraction: float,
          seed: int) -> list[tuple[Examples, Examples, Examples]]:
    """k speaker-disjoint (train, dev, test) folds; dev is a stratified part of each fold's training utterances."""
    speakers = sorted({spk_of[u] for u in data.utts})
    if len(speakers) < k:
        raise ValueError(f"kfold={k} needs at least {k} speakers, the data has {len(speakers)}")
    folds = []
    for rest, test in GroupKFold(n_splits=k).split(data.utts, groups=[spk_of[u] for u in data.utts]):
        train, dev = split_dev(data.subset([data.utts[i] for i in rest]), dev_fraction, seed)
        folds.append((train, dev, data.subset([data.utts[i] for i in test])))
    return folds


def summarise(runs: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Mean and standard deviation of each metric over runs (folds × seeds)."""
    out = {}
    for metric in METRICS:
        values = np.array([r[metric] for r in runs])
        out[metric], out[f"{metric}_std"] = float(values.mean()), float(values.std())
    out["runs"] = len(runs)
    return out


def results_markdown(summary: Mapping[str, Mapping[str, float]], title: str) -> str:
    """A table like C²SER Table V: one row per encoder, UA / WA / F1 in % (mean ± std over runs)."""
    lines = [f"### {title}", "", "| Model | UA (%) | WA (%) | Macro-F1 (%) | runs |", "|---|---|---|---|---|"]
    for name, row in summary.items():
        cells = [f"{100 * row[m]:.2f} ± {100 * row[f'{m}_std']:.2f}" for m in METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row['runs']} |")
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_results(out_dir: Path | str, summary: Mapping, runs: Mapping, title: str) -> None:
    """``results.md`` (the table) and ``results.json`` (the table and every run's scores)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "results.md", results_markdown(summary, title))
    write_atomic(out_dir / "results.json", json.dumps({"summary": summary, "runs": runs}, indent=2) + "\n")


# --- the stage ----------------------------------------------------------------------------------

def _folds(opts, cfg, sets: Mapping[str, Examples], spk_of: Mapping[str, str]) -> list[tuple]:
    """(name, train, dev, test) of every fold the protocol asks for."""
    if opts.protocol == "split":
        return [(f"{test}", sets[cfg.train_set], sets[cfg.dev_set], sets[test]) for test in cfg.test_sets]
    if opts.protocol == "kfold":
        pooled = concat([sets[name] for name in sets])
        return [(f"fold{i + 1}", *fold) for i, fold in enumerate(kfold(pooled, spk_of, opts.kfold,
                                                                        opts.dev_fraction, cfg.seed))]
    if opts.protocol == "folds":
        out = []
        for i, fold in enumerate(opts.folds):
            train, dev = sets[fold.train], sets[fold.dev] if fold.get("dev") else None
            if dev is None:
                train, dev = split_dev(train, opts.dev_fraction, cfg.seed)
            out.append((f"fold{i + 1}", train, dev, sets[fold.test]))
        return out
    raise ValueError(f"probe.protocol must be split, kfold or folds, not '{opts.protocol}'")


def _set_names(opts, cfg) -> list[str]:
    if opts.protocol == "folds":
        if not opts.folds:
            raise ValueError("probe.protocol=folds needs probe.folds: [{train: ..., dev: ..., test: ...}, ...]")
        return sorted({f[k] for f in opts.folds for k in ("train", "dev", "test") if f.get(k)})
    return [cfg.train_set, cfg.dev_set, *cfg.test_sets]


def run(cfg) -> dict:
    """Extract features with every encoder of ``cfg.probe.encoders``, probe them, write the results table."""
    opts = cfg.probe
    if not opts.encoders:
        raise ValueError("probe.encoders is empty: give [{name: ..., model: ...}, ...]")
    out_dir = Path(opts.out_dir)
    trainer_cfg = OmegaConf.to_container(OmegaConf.merge(cfg.trainer, opts.trainer), resolve=True)
    names = _set_names(opts, cfg)
    data_dirs = {name: Path(cfg.data_root) / name for name in names}
    utt2emo = {u: e for d in data_dirs.values() for u, e in read_table(d / "utt2emo").items()}
    spk_of = {u: s for d in data_dirs.values() for u, s in read_table(d / "utt2spk").items()}

    summary, runs = {}, {}
    for entry in opts.encoders:
        encoder, path = entry.name, entry.model
        model, _ = load_emotion2vec(path, opts.size)
        fingerprint = model_fingerprint(path, opts.size)
        sets = {}
        for name, data_dir in data_dirs.items():
            feat_dir = Path(opts.feat_root) / encoder / name
            write_features(model, read_table(data_dir / "wav.scp"), feat_dir, fingerprint,
                           batch_size=opts.feat_batch_size, device=opts.device, progress=False)
            sets[name] = load_examples(feat_dir, utt2emo)
        label_list = label_list_of(*sets.values())
        runs[encoder] = []
        for fold, train, dev, test in _folds(opts, cfg, sets, spk_of):
            for seed in opts.seeds:
                run_dir = out_dir / "runs" / encoder / fold / f"seed{seed}"
                head = train_probe(train, dev, label_list, run_dir, trainer_cfg, opts.hidden, opts.batch_size, seed)
                hyps = predict(head, Batches(test, label_list, opts.batch_size, shuffle=False), label_list)
                write_table(run_dir / ".hyp.tmp", dict(zip(test.utts, hyps)))
                os.replace(run_dir / ".hyp.tmp", run_dir / "hyp")
                scores = classification_scores(test.labels, hyps, label_list)
                runs[encoder].append({"fold": fold, "seed": seed, "n_train": len(train.utts),
                                      "n_dev": len(dev.utts), **{m: scores[m] for m in ("ua", "wa", "f1", "n")}})
                log.info("%s %s seed %d: UA %.4f WA %.4f F1 %.4f", encoder, fold, seed, scores["ua"],
                         scores["wa"], scores["f1"])
        summary[encoder] = summarise(runs[encoder])
    write_results(out_dir, summary, runs, opts.title)
    log.info("linear probe:\n%s", results_markdown(summary, opts.title))
    return summary
