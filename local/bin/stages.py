"""What each stage of run.sh is made from, so that it runs again exactly when that changed.

A stage *reads* config keys and *inputs* (data dirs, shards, models) and
writes *outputs*.  Its fingerprint is the resolved values of the keys it reads
and the content digests of its inputs (local/utils/digest.py).  run.sh skips a
stage only when the fingerprint it recorded equals the current one and its
outputs are still what it wrote (``python -m local.bin.stamp``), and the
trainer resumes a checkpoint only under the same fingerprint.  So editing a
yaml re-runs exactly the stages that read the edited keys, and a stage whose
input changed runs again, then so does every stage that reads its output.
Content, not names: a stage that re-runs and writes the same bytes leaves its
readers up to date.

The code version (commit, dirty flag) is recorded but does not decide: pulling
a README fix must not throw away a three-day training run.  The check says
when the code differs; ``./run.sh --force true`` re-runs.

The keys a stage reads are declared here, and the stage gets a config holding
only those and the plumbing of where files live (``PLUMBING``): a stage that
reads an undeclared key fails in the tests instead of being skipped after an
edit.  Leaf keys named in ``VOLATILE`` (jobs, logging, caches, retries) change
how a stage runs, not what it makes; they are left out of the fingerprint.

Records are ``provenance.json`` files in the stage's record dirs (and in each output dir, such as a
model dir, which may be copied elsewhere)::

    {"stage", "key", "config", "inputs": {label: digest}, "outputs": {path: digest}, "code", "created"}

Stages 0-3 rewrite the data dirs in place, so a data dir's provenance.json is
a ledger, ``{"stages": [record, ...]}`` in stage order; a stage that runs drops
its own entry and those after it.  A data dir that is not what the last entry
left (edited by hand, or by a stage run outside this mechanism) makes the
stages from 1 on run again on what is there now; stage 0 re-runs only when
its own config or inputs change, so it never overwrites a user's edit.
"""
from __future__ import annotations

import contextlib
import importlib.util
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from omegaconf import DictConfig, ListConfig, OmegaConf

from local.utils.digest import RECORD, path_digest, source_digest, value_digest
from local.utils.distributed import rank_and_world
from local.utils.paths import (all_sets, baseline_rows, decode_dir, decode_model, rl_start_model, set_name,
                               shard_dir)
from local.utils.provenance import (code_version, config_changes, describe_code, drop_secrets, flatten, read_json,
                                    write_json)

PLUMBING = ("data_root", "dump_root", "exp_root", "train_set", "dev_set", "test_sets", "nj", "exp_name", "system",
            "corpus.name")
# Keys that say how a stage runs, not what it makes: where (device), in how many processes or jobs.  N ranks
# train on one process's batches (local/data/loader.py, split="rows") and N decoding jobs decode one job's.
VOLATILE = frozenset({"nj", "progress", "log_every", "wandb", "keep_last", "save_every", "cache", "workers",
                      "timeout", "max_retries", "backoff", "api_key_env", "force", "device", "num_jobs", "job"})
IN_PLACE = ("prepare", "format", "attributes", "targets")  # the ledger's order
_ABSENT = object()


@dataclass(frozen=True)
class Stage:
    name: str
    reads: Callable[[DictConfig], tuple[str, ...]]      # config keys whose values the outputs are made of
    inputs: Callable[[DictConfig], dict[str, str]]      # label -> path (or model name) whose content is read
    records: Callable[[DictConfig], list[Path]]         # dirs that get provenance.json
    outputs: Callable[[DictConfig, Path], list[Path]] = lambda cfg, record_dir: [record_dir]
    uses: tuple[str, ...] = ()                          # read, but what they name is an input (paths)
    in_place: bool = False                              # rewrites its record dirs (stages 0-3)
    reads_records: bool = True                          # an in-place stage that reads the dirs it rewrites
    enabled: Callable[[DictConfig], bool] = lambda cfg: True  # a disabled stage makes nothing: always up to date


# --- the stages' inputs ------------------------------------------------------------

def _keys(*keys: str) -> Callable[[DictConfig], tuple[str, ...]]:
    return lambda cfg: keys


def _data_dirs(cfg: DictConfig) -> list[Path]:
    return [Path(cfg.data_root) / name for name in all_sets(cfg)]


def _corpus_files(cfg: DictConfig) -> dict[str, str]:
    """Files the corpus config names (a text list, a label map, a user's data dir to copy as a test set):
    their content is part of what stage 0 makes."""
    corpus = OmegaConf.to_container(cfg.corpus, resolve=True)
    return {f"corpus.{k}": str(v) for k, v in flatten(corpus).items()
            if isinstance(v, str) and v and (Path(v).is_file() or (k.endswith("data_dir") and Path(v).is_dir()))}


def _preparer(cfg: DictConfig) -> dict[str, str]:
    """The source of the preparer modules the corpus config names (its own, those of corpus.extra_test_sets):
    editing one re-runs stage 0."""
    names = {"preparer": cfg.corpus.get("preparer")}
    names.update({f"preparer/{k}": v.get("preparer") for k, v in (cfg.corpus.get("extra_test_sets") or {}).items()})
    specs = {key: importlib.util.find_spec(f"local.data.corpora.{name}") for key, name in names.items() if name}
    return {key: spec.origin for key, spec in specs.items() if spec}


def _training_data(cfg: DictConfig) -> dict[str, str]:
    out = {}
    for name in (cfg.train_set, cfg.dev_set):
        out[f"data/{name}"] = str(Path(cfg.data_root) / name)
        out[f"shards/{name}"] = str(shard_dir(cfg, name) / "manifest.json")
    return out


def _model_sources(model: DictConfig) -> dict[str, str]:
    """The pretrained weights ``model`` (cfg.model) loads: the frozen Emotion2Vec-S, Whisper, the LM."""
    out = {}
    for key in ("e2v.path", "encoder.name_or_path", "llm.name_or_path", "llm.tokenizer"):
        value = OmegaConf.select(model, key, default=None)
        if value:
            out[f"model.{key}"] = str(value)
    return out


def _trainer_inputs(start: Callable[[DictConfig], Path | None]) -> Callable[[DictConfig], dict]:
    def inputs(cfg: DictConfig) -> dict[str, str]:
        out = {**_training_data(cfg), **_model_sources(cfg.model)}
        model = start(cfg)
        if model is not None:
            out["init_from"] = str(model)
        return out
    return inputs


def _decode_inputs(cfg: DictConfig) -> dict[str, str]:
    out = {"model": str(decode_model(cfg))}
    for entry in cfg.test_sets:
        data = Path(entry) if Path(entry).is_absolute() else Path(cfg.data_root) / entry
        out[f"data/{set_name(entry)}"] = str(data)
        shards = shard_dir(cfg, entry) / "manifest.json"
        if not Path(entry).is_absolute() and shards.is_file():
            out[f"shards/{set_name(entry)}"] = str(shards)
    return out


def _score_inputs(cfg: DictConfig) -> dict[str, str]:
    opts, out = cfg.score, {}
    for entry in cfg.test_sets:
        name = set_name(entry)
        data = Path(entry) if Path(entry).is_absolute() else Path(cfg.data_root) / entry
        out[f"data/{name}"] = str(data)
        for mode in cfg.decode.modes:
            out[f"decode/decode_{name}_{mode}"] = str(Path(opts.exp_dir) / f"decode_{name}_{mode}")
        for row, template in baseline_rows(cfg).items():
            out[f"baseline/{row}/{name}"] = template.replace("{set}", name)
    if opts.attributes:
        out[f"data/{cfg.train_set}"] = str(Path(cfg.data_root) / cfg.train_set)
    return out


def _judged_task(cfg: DictConfig) -> bool:
    """Whether a decoded mode is of a task a judge scores (SQA): the judge's config then decides its numbers."""
    from local.reasoning.targets import target_spec  # the registries (a plugin's task or type included)
    from local.reasoning.tasks import task_spec
    prompts = cfg.decode.get("prompts") or {}
    return any(task_spec(target_spec(prompts[m]).task).metric.startswith("judge:")
               for m in cfg.decode.modes if m in prompts)


def _score_reads(cfg: DictConfig) -> tuple[str, ...]:
    # corpus.labels: of rows with no model (attributes); corpus.published: the papers' rows beside ours
    keys = ("score", "seed", "baselines", "system", "corpus.labels", "corpus.published")
    if cfg.score.get("judge_rubrics") or _judged_task(cfg):
        keys += ("judge",)
    if cfg.score.extract == "llm" and cfg.score.get("extract_teacher") is None:
        keys += ("teacher",)
    return keys


def _rl_reads(cfg: DictConfig) -> tuple[str, ...]:
    keys = ("rl", *TRAINING)
    from local.train.rl.rewards import reward_spec  # the registry: a plugin's reward says whether it asks a judge
    return keys + (("judge",) if reward_spec(cfg.rl.reward.kind).needs_judge else ())


def _probe_inputs(cfg: DictConfig) -> dict[str, str]:
    out = {f"encoder/{e.name}": str(e.model) for e in cfg.probe.encoders}
    names = ({f[k] for f in cfg.probe.folds for k in ("train", "dev", "test") if f.get(k)}
             if cfg.probe.protocol == "folds" else all_sets(cfg))
    out.update({f"data/{n}": str(Path(cfg.data_root) / n) for n in sorted(names)})
    return out


# corpus.labels: the classes a model answers in (its instructions and read-out list them)
TRAINING = ("model", "trainer", "seed", "shards.max_shard_size", "shards.audio_format", "corpus.labels")

STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("prepare", _keys("corpus"), lambda cfg: {"prepare.py": "prepare.py", **_preparer(cfg), **_corpus_files(cfg)},
          _data_dirs, in_place=True, reads_records=False),
    # Which set is train, dev or test changes what stages 1-2 write (test sets are never filtered).
    Stage("format", _keys("format", "corpus.labels", "corpus.label_map", "corpus.sentiment_map", "train_set", "dev_set",
                          "test_sets"),
          lambda cfg: {**({"label_map": cfg.corpus.label_map} if isinstance(cfg.corpus.label_map, str) else {}),
                       **({"sentiment_map": cfg.corpus.sentiment_map}
                          if isinstance(cfg.corpus.get("sentiment_map"), str) else {}),
                       **({"asr": cfg.format.asr.model} if cfg.format.asr.model else {})},
          _data_dirs, in_place=True),
    Stage("attributes", _keys("attributes", "corpus.default_lang", "train_set", "dev_set", "test_sets"),
          lambda cfg: {},
          _data_dirs, in_place=True),
    Stage("targets", _keys("targets", "teacher", "corpus.default_lang"), lambda cfg: {}, _data_dirs, in_place=True),
    Stage("shards", _keys("shards", "seed"),
          lambda cfg: {f"data/{n}": str(Path(cfg.data_root) / n) for n in all_sets(cfg)},
          lambda cfg: [shard_dir(cfg, n) for n in all_sets(cfg)],
          outputs=lambda cfg, d: [d / "manifest.json"]),
    # Stage 5 reads the shards' audio and labels, not their targets: new targets must not retrain it.
    Stage("pretrain", _keys("pretrain", "trainer", "seed"),
          lambda cfg: {"train_shards": str(Path(cfg.pretrain.train_shards) / "manifest.json#parts.data"),
                       **({"valid_shards": str(Path(cfg.pretrain.valid_shards) / "manifest.json#parts.data")}
                          if cfg.pretrain.valid_shards else {}),
                       **({"init": cfg.pretrain.init} if cfg.pretrain.init != "scratch" else {})},
          lambda cfg: [Path(cfg.pretrain.exp_dir)], outputs=lambda cfg, d: [d / "model", d / "init"]),
    Stage("probe", _keys("probe", "trainer", "seed"), _probe_inputs, lambda cfg: [Path(cfg.probe.out_dir)],
          outputs=lambda cfg, d: [d / "results.json"]),
    Stage("sft", _keys("sft", *TRAINING),
          _trainer_inputs(lambda cfg: Path(cfg.sft.init_from) if cfg.sft.get("init_from") else None),
          lambda cfg: [Path(cfg.sft.exp_dir)], outputs=lambda cfg, d: [d / "model"],
          enabled=lambda cfg: cfg.sft.enabled),
    Stage("distill", _keys("distill", *TRAINING),
          _trainer_inputs(lambda cfg: Path(cfg.distill.init_from) if cfg.distill.get("init_from") else None),
          lambda cfg: [Path(cfg.distill.exp_dir)], outputs=lambda cfg, d: [d / "model"],
          enabled=lambda cfg: cfg.distill.enabled),
    Stage("rl", _rl_reads, _trainer_inputs(rl_start_model), lambda cfg: [Path(cfg.rl.exp_dir)],
          outputs=lambda cfg, d: [d / "model", d / "summary.json"], enabled=lambda cfg: cfg.rl.enabled,
          uses=("distill.enabled", "distill.exp_dir", "sft.exp_dir")),
    Stage("decode", _keys("decode", "seed", "shards.max_shard_size", "shards.audio_format"), _decode_inputs,
          lambda cfg: [decode_dir(cfg, e, m) for e in cfg.test_sets for m in cfg.decode.modes],
          uses=("model", "distill.enabled", "distill.exp_dir", "sft.exp_dir")),
    Stage("score", _score_reads, _score_inputs, lambda cfg: [Path(cfg.score.exp_dir)],
          outputs=lambda cfg, d: [d / "results.json", d / "results.md"], uses=("decode.modes", "decode.prompts")),
)}


# --- configs ---------------------------------------------------------------------

def _value(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node


def select(cfg: DictConfig, keys: tuple[str, ...] | list[str]) -> dict:
    """The resolved values of dotted ``keys`` as a nested dict (keys absent from ``cfg`` are left out)."""
    out: dict = {}
    for key in keys:
        node = OmegaConf.select(cfg, key, default=_ABSENT)
        if node is _ABSENT:
            continue
        *parents, leaf = key.split(".")
        d = out
        for p in parents:
            d = d.setdefault(p, {})
        d[leaf] = _value(node)
    return out


def _drop_volatile(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_volatile(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_drop_volatile(v) for v in value]
    return value


def _without_lengths(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_lengths(v) for k, v in value.items() if k not in ("max_steps", "max_epochs")}
    return value


def restrict(cfg: DictConfig, stage: Stage) -> DictConfig:
    """The config a stage runs with: the keys it declares, and the plumbing."""
    return OmegaConf.create(select(cfg, (*PLUMBING, *stage.uses, *stage.reads(cfg))))


def stage_config(cfg: DictConfig, stage: Stage) -> dict:
    """The part of the config that is in the fingerprint (never a credential: it is written to disk)."""
    return drop_secrets(_drop_volatile(select(cfg, stage.reads(cfg))))


def _digest(label: str, path: str) -> str | None:
    if "#" in path:  # a digest recorded inside a JSON file: "manifest.json#parts.data"
        file, key = path.split("#", 1)
        value = read_json(file)
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value if isinstance(value, str) else None
    return source_digest(path) if label.startswith("model.") else path_digest(path)


def input_digests(cfg: DictConfig, stage: Stage) -> dict[str, str | None]:
    """label -> content digest of each input (None: missing), in label order.  Pretrained models named in
    ``model.*`` may be hub ids rather than paths (:func:`source_digest`); ``file.json#a.b`` is a digest
    recorded in a file (a part of what a shard dir is made from)."""
    return {label: _digest(label, p) if p else None for label, p in sorted(stage.inputs(cfg).items())}


# --- records -----------------------------------------------------------------------

def _ledger(record_dir: Path) -> list[dict]:
    data = read_json(record_dir / RECORD)
    return list(data.get("stages", [])) if isinstance(data, dict) else []


def _record(record_dir: Path, stage: Stage) -> dict | None:
    if stage.in_place:
        return next((r for r in _ledger(record_dir) if r.get("stage") == stage.name), None)
    data = read_json(record_dir / RECORD)
    return data if isinstance(data, dict) and data.get("stage") == stage.name else None


@dataclass
class Check:
    up_to_date: bool
    reasons: list[str] = field(default_factory=list)   # why it must run
    notes: list[str] = field(default_factory=list)     # what the user may want to know anyway


def check(cfg: DictConfig, name: str) -> Check:
    """Whether stage ``name`` is up to date for ``cfg``, and if not, why."""
    stage = STAGES[name]
    if not stage.enabled(cfg):
        return Check(True)
    config, inputs = stage_config(cfg, stage), input_digests(cfg, stage)
    reasons, notes = [], []
    for record_dir in stage.records(cfg):
        record = _record(record_dir, stage)
        if record is None:
            reasons.append(f"{record_dir}: no record of stage {name} (not run yet, or interrupted)")
            continue
        changes = config_changes(record.get("config", {}), config, limit=None)
        reasons += [f"config {c}" for c in changes]
        old = record.get("inputs", {})
        for label in sorted(set(inputs) | {k for k in old if not k.startswith("before:")}):
            if old.get(label) != inputs.get(label):
                reasons.append(f"input {label} changed" if label in old and label in inputs
                               else f"input {label} {'added' if label in inputs else 'removed'}")
        for path, digest in ({} if stage.in_place else record.get("outputs", {})).items():
            if path_digest(path) != digest:
                reasons.append(f"output {path} is not what the stage wrote (modified or removed)")
        if stage.in_place and stage.reads_records:  # later stages rewrite the dir: compare with the last one
            last = _ledger(record_dir)[-1]
            if path_digest(record_dir) != last.get("outputs", {}).get(str(record_dir)):
                reasons.append(f"{record_dir} changed since stage {last.get('stage')} wrote it")
        if not notes and record.get("code") != code_version() and record.get("code", {}).get("commit"):
            notes.append(f"{record_dir}: made by {describe_code(record.get('code'))}, "
                         f"the code is now {describe_code(code_version())}")
        if reasons:
            break  # the first stale output is reason enough; the rest would repeat it
    return Check(not reasons, list(dict.fromkeys(reasons)), list(dict.fromkeys(notes)))


@dataclass
class StageRun:
    """A stage in progress: the config it runs with (:func:`restrict`) and its fingerprint ``key``."""

    cfg: DictConfig
    key: str
    record: dict


@contextlib.contextmanager
def stage_run(cfg: DictConfig, name: str) -> Iterator[StageRun]:
    """Run stage ``name`` under a record: stale records go first, the new ones are written only on success.

    ``with stage_run(cfg, "sft") as run: train(run.cfg, fingerprint=run.key)``.
    """
    stage = STAGES[name]
    if not stage.enabled(cfg):  # nothing to make, nothing to record
        yield StageRun(restrict(cfg, stage), "", {})
        return
    record_dirs = stage.records(cfg)
    config, inputs = stage_config(cfg, stage), input_digests(cfg, stage)
    kept: dict[Path, list[dict]] = {}
    if stage.in_place:
        order = IN_PLACE.index(name)
        for d in record_dirs:
            if stage.reads_records:
                inputs[f"before:{d}"] = path_digest(d)
            kept[d] = [r for r in _ledger(d) if r.get("stage") in IN_PLACE[:order]]
            if d.is_dir():
                write_json(d / RECORD, {"stages": kept[d]})
    else:
        for d in record_dirs:
            (d / RECORD).unlink(missing_ok=True)
    # The trainer's resume key: the lengths of a run (max_steps, max_epochs) enter it as the schedule they
    # give (local/train/loop.py), so that a constant-rate run extended to more steps resumes.
    key = value_digest({"config": _without_lengths(config),
                        "inputs": {k: v for k, v in inputs.items() if not k.startswith("before:")}})
    record = {"stage": name, "key": key, "config": config, "inputs": inputs, "code": code_version(),
              "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    yield StageRun(restrict(cfg, stage), key, record)
    if rank_and_world()[0] != 0:
        return  # under torchrun rank 0 alone writes the records, once its outputs are whole
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    for d in record_dirs:
        outputs = {str(p): path_digest(p) for p in stage.outputs(cfg, d)}
        if stage.in_place:
            if not d.is_dir():
                continue  # a set the stage did not make (e.g. prepare writes fixed splits)
            entry = {**record, "outputs": {str(d): path_digest(d)}}
            write_json(d / RECORD, {"stages": kept[d] + [entry]})
        elif d.is_dir() or outputs:
            d.mkdir(parents=True, exist_ok=True)
            write_json(d / RECORD, {**record, "outputs": outputs})
            for out in stage.outputs(cfg, d):  # a model dir travels alone: it carries its record too
                if out.is_dir() and out != d:
                    write_json(out / RECORD, {**record, "outputs": outputs})
