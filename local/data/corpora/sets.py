"""Stage 0 of a real-corpus recipe: the corpus' preparer, then the recipe's sets as unions of its parts.

A preparer returns the corpus cut the way it is released (IEMOCAP's sessions, MSP-Podcast's splits,
RAVDESS as one ``all``); a recipe says in its corpus config which parts, or which speakers of them,
make each of its sets, per fold::

    preparer: iemocap                      # local.data.corpora.<preparer>
    fold: 5                                # the fold this run prepares
    folds:
      5: {train: [session1, session2, session3], dev: [session4], test: [session5]}
      # a set may also take some speakers of a part:
      # test: [{part: all, speakers: [Actor_01, Actor_11]}]
      # train: [{part: all, except_speakers: [Actor_01, Actor_11]}]

A speaker named in a selector that the part does not hold is an error: a typo would otherwise
empty a test set silently.
"""
from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from omegaconf import DictConfig, OmegaConf

from local.data.kaldi import DataDir, combine_data

log = logging.getLogger(__name__)


def select(parts: Mapping[str, DataDir], selector: Any) -> tuple[str, DataDir]:
    """(a name, the data) of one selector: a part's name, or ``{part, speakers | except_speakers}``."""
    if isinstance(selector, str):
        selector = {"part": selector}
    selector = dict(selector)
    name = selector.pop("part", None)
    if name not in parts:
        raise ValueError(f"corpus.folds: no part {name!r}; the preparer gives {sorted(parts)}")
    data = parts[name]
    unknown_keys = set(selector) - {"speakers", "except_speakers"}
    if unknown_keys or len(selector) > 1:
        raise ValueError(f"corpus.folds: a selector of {name!r} takes speakers or except_speakers, "
                         f"not {sorted(selector)}")
    if not selector:
        return name, data
    key, speakers = next(iter(selector.items()))
    speakers = set(map(str, speakers))
    held = set(data["utt2spk"].values())
    # ids start with their speaker's; a named speaker all of whose utterances were rejected still owns them
    owner = {u: owner_of(u, held | speakers) for u in data.rejected}
    missing = sorted(speakers - held - set(owner.values()))
    if missing:
        raise ValueError(f"corpus.folds: part {name!r} has no speaker {missing}")
    wanted = (lambda spk: spk in speakers) if key == "speakers" else (lambda spk: spk not in speakers)
    chosen = data.subset(u for u, spk in data["utt2spk"].items() if wanted(spk))
    # a rejected utterance of no known speaker is listed with the rest of the part, not in a selection
    chosen.rejected = {u: why for u, why in data.rejected.items()
                       if (wanted(owner[u]) if owner[u] else key == "except_speakers")}
    return f"{name}[{key}={','.join(sorted(speakers))}]", chosen


def owner_of(utt: str, speakers: set[str]) -> str | None:
    """The speaker an utterance id starts with (the longest, should one speaker id start another)."""
    matches = [s for s in speakers if utt.startswith(s)]
    return max(matches, key=len) if matches else None


def fold_sets(parts: Mapping[str, DataDir], folds: Mapping, fold: Any) -> dict[str, DataDir]:
    """{set name: data} of ``fold``: each set the union of its selectors."""
    chosen = folds.get(fold, folds.get(str(fold)))
    if chosen is None:
        raise ValueError(f"corpus.fold={fold}: not one of corpus.folds {sorted(map(str, folds))}")
    sets = {}
    for set_name, selectors in chosen.items():
        picked = dict(select(parts, s) for s in selectors)
        sets[set_name] = combine_data(picked)
    return sets


def draw(data: DataDir, n: int, seed: int = 0) -> DataDir:
    """At most ``n`` utterances of ``data``, a seeded draw (corpus.max_utts: the smoke recipe's few hundred);
    its rejected list stays whole, so what the corpus lost is still reported.  The seed is fixed: every
    system and fold of a recipe sees the same draw."""
    if len(data) <= n:
        return data
    keep = np.random.default_rng(seed).choice(data.utts, size=n, replace=False).tolist()
    log.info("corpus.max_utts=%d: %d of %d utterances drawn", n, n, len(data))
    return data.subset(keep, keep_rejected=True)


def run_preparer(spec: Mapping, db: str | None, what: str) -> dict[str, DataDir]:
    """The parts ``local.data.corpora.<spec.preparer>`` makes of the corpus at ``db``; ``what`` names the
    config entry in the error that an empty ``db`` gets."""
    if not db:
        raise ValueError(f"{what} is empty: set {spec['var']} (db.sh) to where that corpus is on this machine")
    module = importlib.import_module(f"local.data.corpora.{spec['preparer']}")
    options = spec.get("preparer_args") or {}
    return module.prepare(db, var=spec["var"], **options)


def prepare_extra_test_sets(cfg: DictConfig) -> dict[str, DataDir]:
    """Write ``corpus.extra_test_sets`` under ``data_root``, each a test set the recipe lists in
    ``--test_sets``: ``{name: {preparer, var, part[, preparer_args]}}`` is a part of another corpus (its root
    from the environment variable ``var``, as db.sh sets it), to score the recipe's models across corpora
    (stage 1 maps its labels, stage 10 scores the labels it shares with the model); ``{name: {data_dir}}``
    is a user's Kaldi data dir, copied so that no stage ever writes to it (run.sh makes these entries
    from a path in ``--test_sets``)."""
    sets = {}
    extra = cfg.corpus.get("extra_test_sets")
    for name, spec in (OmegaConf.to_container(extra, resolve=True) if extra else {}).items():
        if spec.get("data_dir"):
            sets[name] = DataDir.load_lenient(spec["data_dir"])  # a bad line is rejected by name, not fatal
            sets[name].save(Path(cfg.data_root) / name)
            log.info("%s/%s: a copy of %s, %d utterances", cfg.data_root, name, spec["data_dir"], len(sets[name]))
            continue
        missing = [k for k in ("preparer", "var", "part") if not spec.get(k)]
        if missing:
            raise ValueError(f"corpus.extra_test_sets.{name}: needs {', '.join(missing)}")
        parts = run_preparer(spec, os.environ.get(spec["var"]), f"corpus.extra_test_sets.{name}: ${spec['var']}")
        if spec["part"] not in parts:
            raise ValueError(f"corpus.extra_test_sets.{name}: {spec['preparer']} has no part {spec['part']!r} "
                             f"(it gives {sorted(parts)})")
        sets[name] = parts[spec["part"]]
        sets[name].save(Path(cfg.data_root) / name)
        log.info("%s/%s: %s's %s, %d utterances, %d rejected", cfg.data_root, name, spec["preparer"], spec["part"],
                 len(sets[name]), len(sets[name].rejected))
    return sets


def prepare_recipe(cfg: DictConfig) -> dict[str, DataDir]:
    """Run the corpus' preparer and write the sets of ``corpus.fold`` under ``data_root``."""
    corpus = cfg.corpus
    args = OmegaConf.to_container(corpus.preparer_args, resolve=True) if corpus.get("preparer_args") else {}
    parts = run_preparer({"preparer": corpus.preparer, "var": corpus.var, "preparer_args": args}, corpus.get("db"),
                         "corpus.db")
    folds = OmegaConf.to_container(corpus.folds, resolve=True)
    sets = fold_sets(parts, folds, corpus.fold)
    if corpus.get("max_utts"):
        sets = {name: draw(data, corpus.max_utts) for name, data in sets.items()}
    for name, data in sets.items():
        data.save(Path(cfg.data_root) / name)
        log.info("%s/%s: %d utterances, %d rejected (fold %s)", cfg.data_root, name, len(data), len(data.rejected),
                 corpus.fold)
    return sets
