"""Supervised fine-tuning of the audio LLM: stage 6 (explicit reasoning) and stage 7 (internalisation).

One mechanism serves every paper: a *schedule* says, for each optimizer step,
which target type the whole batch trains on (C²SER samples "at batch level"):

* ``explicit`` / ``implicit``: always the one type (Stage I; the no-CoT baseline).
* ``linear``: the probability of the explicit type decays linearly from 1 to 0
  over the stage (C²SER §III-D self-distillation).
* ``mix``: explicit and implicit 1:1 (CogAudio Stage II, Prompt A / Prompt B).

The instruction the model reads is the target type's (local.reasoning.targets
.TARGET_TYPES); types whose instruction is the question pool draw a question.
The draw is seeded by (seed, step), so a resumed run draws what the
uninterrupted one did.  What the model was trained with travels with it
(:attr:`AudioLLM.facts`, saved as ``training.yaml``): each target type's
instruction text, whether the transcript was in the prompt, the read-out.  A
stage that continues another's model reads them from there, so stage 7 asks
with the very words stage 6 trained on even if a prompt file was edited since,
and it refuses settings that contradict them.

With ``kl_weight`` λ > 0 the loss is the ambiguity paper's Eq. 3,
CE(target tokens) + λ·KL(p_gold ‖ p_model): p_gold is the utterance's soft
label (utt2dist, carried by the shards as meta "dist"; the hard label where a
set has none), p_model the class-name read-out (local/models/readout.py) after
the gold target cut at the answer prefix, teacher-forced.  The KL is
``kl_to_target`` (local/train/rl/losses.py), whose 0·log 0 = 0 needs no
ε-smoothing of p_gold, and whose log q is a finite log-softmax.  The read-out
runs inside the forward of :class:`ReadoutSFT`, the module the trainer wraps,
so that DDP and FSDP see the two terms as one pass; with λ = 0 the trainer
gets the bare audio LLM and nothing differs from CE-only training.
"""
from __future__ import annotations

import itertools
import json
import logging
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf
from transformers import AutoTokenizer

from local.data.labels import EMOTIONS, recipe_labels
from local.data.loader import ShardLoader
from local.data.shards import load_manifest
from local.models.alm import IGNORE_INDEX, AudioLLM, build_alm, load_alm, save_alm, trained_state
from local.models.cache import cached_shards
from local.models.readout import Readout, gold_distributions
from local.models.tokenizer import AUDIO_TOKEN, train_tokenizer
from local.reasoning.prompts import instruction, with_transcript
from local.reasoning.targets import TARGET_TYPES, target_spec
from local.reasoning.tasks import TASKS, draw_question, pool_questions, task_labels, task_spec
from local.train.loop import Trainer
from local.train.multitask import run_rounds, stage_tasks
from local.train.trainer_config import TrainerConfig, planned_steps
from local.train.rl.losses import kl_to_target
from local.utils.digest import value_digest
from local.utils.distributed import global_mean, main_process_first, on_main_process

log = logging.getLogger(__name__)

SCHEDULES = ("explicit", "implicit", "linear", "mix")


@dataclass(frozen=True)
class TargetSchedule:
    """Which target type the batch of optimizer step ``step`` (of ``total``) trains on."""

    mode: str
    explicit: str
    implicit: str
    total: int
    seed: int = 0

    def __post_init__(self):
        if self.mode not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got '{self.mode}'")
        for t in (self.explicit, self.implicit):
            target_spec(t)

    def p_explicit(self, step: int) -> float:
        if self.mode == "linear":
            return max(0.0, 1.0 - step / max(1, self.total - 1))
        return {"explicit": 1.0, "implicit": 0.0, "mix": 0.5}[self.mode]

    def pick(self, step: int) -> str:
        rng = np.random.default_rng([self.seed, step])
        return self.explicit if rng.random() < self.p_explicit(step) else self.implicit


def instruction_for(target_type: str, rng: np.random.Generator, facts: Mapping | None = None) -> str:
    """The text the model is asked with: the one it was trained with for this target type (``facts``), else
    the prompt file's; the question pool gives one question per draw."""
    known = ((facts or {}).get("targets") or {}).get(target_type)
    if known and known.get("text"):
        return known["text"]
    if known and (known.get("questions") or {}).get("train"):
        pool = known["questions"]["train"]
        return pool[int(rng.integers(len(pool)))]
    spec, labels = TARGET_TYPES[target_type], (facts or {}).get("labels") or EMOTIONS
    if spec.instruction == "questions":
        task = task_spec(spec.task)
        return draw_question(task, "train", task_labels(task, labels) or (), rng)
    return instruction(spec.instruction, labels)


def training_facts(model: AudioLLM, stage: DictConfig, types: Sequence[str], labels: Sequence[str]) -> dict:
    """:attr:`AudioLLM.facts` for a stage training ``types`` on a recipe whose classes are ``labels``
    (corpus.labels): a fresh model takes the stage's settings, a continued one keeps its own, and a stage
    setting that contradicts them is an error naming the key."""
    facts = dict(model.facts)
    labels = list(labels)
    if facts.get("labels") and list(facts["labels"]) != labels:
        raise ValueError(f"corpus.labels is {labels}, but the model this stage continues from answers in "
                         f"{list(facts['labels'])}: a model keeps the label set it was trained with")
    own = {"transcript_in_prompt": bool(stage.get("transcript_in_prompt")),
           "readout": readout_facts(stage, labels)}
    for key, value in own.items():
        if key not in facts:
            facts[key] = value
        elif stage.get(key) is not None and value != facts[key]:
            raise ValueError(f"{key} is {value} for this stage, but the model it continues from was trained with "
                             f"{facts[key]}: a stage cannot change how its model reads its input; leave the "
                             "key at its default (it follows the model) or retrain from scratch")
    facts.setdefault("labels", labels)
    targets = dict(facts.get("targets") or {})
    for t in types:
        if t not in targets:
            targets[t] = target_facts(t, facts["labels"])
    facts["targets"] = targets
    return facts


def target_facts(target_type: str, labels: Sequence[str]) -> dict:
    """How the model is asked for ``target_type``, kept in its training.yaml: a fixed instruction's text; for a
    question-pool type its task's training and evaluation questions (stage 9 asks the evaluation ones, as
    the model was trained beside them, even if questions.json changes later); for "record" the targets'
    own questions (SQA)."""
    spec = TARGET_TYPES[target_type]
    task = task_spec(spec.task)
    if spec.instruction == "record":
        return {"instruction": "record", "text": None, "task": task.name}
    if spec.instruction == "questions":
        task_labels_ = task_labels(task, labels) or ()
        return {"instruction": "questions", "text": None, "task": task.name,
                "questions": {split: pool_questions(task, split, task_labels_) for split in ("train", "eval")}}
    # a fixed instruction of the emotion task (C²SER, CogAudio, ambiguity): no task fields, so their decodes and
    # tables stay as they were; another task's type is scored by its task's metric (stage 10)
    return {"instruction": spec.instruction, "text": instruction(spec.instruction, labels),
            **({"task": task.name} if task.name != "er" else {})}


def select_rows(batch: Mapping, rows: Sequence[int]) -> dict:
    """The batch restricted to ``rows`` (utterances without the wanted target are dropped)."""
    index = torch.as_tensor(list(rows), dtype=torch.long)
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            out[key] = value[index]
        elif isinstance(value, list):
            out[key] = [value[i] for i in rows]
        elif isinstance(value, dict):
            out[key] = {k: v[index] for k, v in value.items()}
        else:
            out[key] = value
    return out


def sft_batch(batch: Mapping, target_type: str, step: int, seed: int = 0, transcript: bool = False,
              facts: Mapping | None = None) -> dict | None:
    """Add "prompts" and "responses" for ``target_type``; None if no utterance has that target.  A question
    drawn from a pool is the utterance's own draw at this step, so a row gets the same question whichever
    rank's slice of the global batch it is in."""
    rows, responses = [], []
    for i, records in enumerate(batch["targets"]):
        found = [r["target"] for r in records if r["type"] == target_type]
        if found:
            rows.append(i)
            responses.append(found[0])
    if not rows:
        return None
    out = select_rows(batch, rows) if len(rows) < len(batch["targets"]) else dict(batch)
    utts = out.get("utts") or [str(i) for i in rows]
    prompts = [instruction_for(target_type, np.random.default_rng([seed, step, 1, zlib.crc32(u.encode())]), facts)
               for u in utts]
    if transcript:
        missing = [u for u, m in zip(out.get("utts") or [m.get("utt") for m in out["meta"]], out["meta"])
                   if not m.get("text")]
        if missing:
            raise ValueError(f"the prompt carries the transcript (transcript_in_prompt), and {missing[:3]} have none "
                             "(their data dir's text table)")
        prompts = [with_transcript(p, m["text"]) for p, m in zip(prompts, out["meta"])]
    out["prompts"], out["responses"] = prompts, responses
    return out


# --- the loss ---------------------------------------------------------------------

class ReadoutSFT(nn.Module):
    """The audio LLM whose forward also returns KL(p_gold ‖ read-out after the gold target)."""

    def __init__(self, alm: AudioLLM, readout: Readout):
        super().__init__()
        self.alm, self.readout = alm, readout

    def forward(self, batch: Mapping):
        out = self.alm(batch)
        logq = self.readout.logprobs(self.alm, batch, batch["prompts"], batch["responses"])
        return out, kl_to_target(logq, gold_distributions(batch, self.readout.labels).to(logq.device))


def sft_loss(model: nn.Module, batch: Mapping, kl_weight: float = 0.0) -> tuple[torch.Tensor, dict]:
    """(CE + λ·KL, {"ce", "kl"}) through a :class:`ReadoutSFT`; (CE, {}) through the audio LLM when λ is 0.

    Under torchrun each rank holds a slice of the global batch: the CE is a mean over all ranks' target
    tokens and the KL over all ranks' utterances (:func:`global_mean`), as one process would compute them."""
    if not kl_weight:
        out = model(batch)
        return global_mean(out.loss, target_tokens(out.labels)), {}
    out, kl = model(batch)
    ce, kl = global_mean(out.loss, target_tokens(out.labels)), global_mean(kl, len(out.labels))
    return ce + kl_weight * kl, {"ce": ce.detach(), "kl": kl.detach()}


def target_tokens(labels: torch.Tensor) -> int:
    """The tokens a causal LM's loss averages over: those with a label, less the first position."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


# --- what a stage runs --------------------------------------------------------------

def tokenizer_texts(targets_path: Path, labels: Sequence[str] = EMOTIONS, extra: Sequence[str] = (),
                    types: Sequence[str] | None = None) -> list[str]:
    """What a tokenizer for the tiny LM is trained on: every fixed instruction and question pool, the targets of
    ``types`` (all when None; a target's own question too) and ``extra`` (the model's audio markers).  Only the
    stage's types: a target type added for another system must not change this system's tokenizer."""
    texts = [instruction(t.instruction, labels) for t in TARGET_TYPES.values()
             if t.instruction not in ("questions", "record")]
    for task in TASKS.values():
        for split in ("train", "eval"):
            if (task.train_pool if split == "train" else task.eval_pool):
                texts += pool_questions(task, split, task_labels(task, labels) or ())
    with open(targets_path, encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            if types is None or record["type"] in types:
                texts += [record["target"]] + ([record["question"]] if record.get("question") else [])
    return texts + [e for e in extra if e]


def audio_markers(prefix: str) -> str:
    """The words around the audio in the prompt (``<audio_start> … <audio_end>``), which the tokenizer must
    know; "" for a bare ``<|audio|>`` (a special token of its own), so other systems' tokenizers stay as they were."""
    return prefix.replace(AUDIO_TOKEN, " ").strip()


def make_tokenizer(cfg: DictConfig, stage: DictConfig, types: Sequence[str] | None = None):
    """The LLM's own tokenizer, or (tiny random LM) one trained on the train targets, kept in the exp dir
    under a name that is the digest of what it is trained from, so other targets get another tokenizer."""
    llm = cfg.model.llm
    if llm.get("name_or_path") or llm.get("tokenizer"):
        return None
    texts = tokenizer_texts(Path(cfg.data_root) / cfg.train_set / "targets.jsonl", recipe_labels(cfg.corpus),
                            [audio_markers(cfg.model.get("audio_prefix") or "")], types)
    path = Path(stage.exp_dir).parent / f"tokenizer_{value_digest([texts, stage.tokenizer_vocab])[:12]}"
    with main_process_first():
        if not (path / "tokenizer.json").exists():
            tok = train_tokenizer(texts, vocab_size=stage.tokenizer_vocab)
            tmp = path.with_name(f".{path.name}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tok.save_pretrained(tmp)
            tmp.rename(path)
    return AutoTokenizer.from_pretrained(path)


def shard_loader(model, cfg: DictConfig, set_name: str, batch_size: int, shuffle: bool, **kwargs) -> ShardLoader:
    """A loader of the set ``set_name`` with the model's frozen-encoder cache (written here the first time), audio
    decoded only when some encoder runs on the fly; ``kwargs`` go to the ShardLoader."""
    with main_process_first():
        shard_dir, names = cached_shards(model, cfg, set_name)
    kwargs.setdefault("seed", cfg.seed)
    return ShardLoader(shard_dir, batch_size=batch_size, features=names, shuffle=shuffle,
                       load_audio=not set(model.feature_names()) <= set(names), **kwargs)


def shard_loaders(model, cfg: DictConfig, batch_size: int, utts: Sequence[str] | None = None,
                  seed: int | None = None) -> tuple[ShardLoader, ShardLoader]:
    """Train (shuffled; only ``utts`` when given) and dev loaders of a training stage; under torchrun
    ``batch_size`` is the global batch, each rank taking its rows of every batch, so N processes train as
    one would.  ``seed``: the shuffling's (cfg.seed by default)."""
    return (shard_loader(model, cfg, cfg.train_set, batch_size, shuffle=True, split="rows", utts=utts,
                         **({} if seed is None else {"seed": seed})),
            shard_loader(model, cfg, cfg.dev_set, batch_size, shuffle=False, split="rows"))


def train_subset(model, cfg: DictConfig, stage: DictConfig) -> list[str] | None:
    """``stage.max_train_utts`` utterances of the training set, a seeded draw (a CPU recipe's budget: the
    same utterances every epoch and every round); None: all of them."""
    limit = stage.get("max_train_utts")
    if not limit:
        return None
    with main_process_first():
        shard_dir, _ = cached_shards(model, cfg, cfg.train_set)
    utts = sorted(load_manifest(shard_dir)["utts"])
    if limit >= len(utts):
        return None
    chosen = np.random.default_rng([cfg.seed, 7]).choice(len(utts), size=int(limit), replace=False)
    log.info("training on %d of the %d utterances of %s (max_train_utts)", limit, len(utts), cfg.train_set)
    return [utts[i] for i in sorted(chosen)]


def fit_feature_norm(model, cfg: DictConfig, stage: DictConfig) -> None:
    """The encoder-output statistics a training stage needs: the training set's, once (the first
    ``stage.norm_batches`` batches, in shard order; all when null: computed the same way on every run,
    so a resumed stage gets the same), and with per-speaker normalisation each speaker's in the train
    and dev sets, on every run (every rank reads all of them)."""
    if model.feature_norm is None:
        return
    if not model.feature_norm.fitted:
        limit = stage.get("norm_batches")
        model.fit_feature_norm(itertools.islice(shard_loader(model, cfg, cfg.train_set, stage.batch_size, False,
                                                             split="rows"), limit))
        log.info("feature normalisation: statistics of %s from %s batches of %s",
                 ", ".join(model.feature_norm.names), limit or "all", cfg.train_set)
    if model.speaker_norm:
        model.fit_feature_norm(itertools.chain.from_iterable(
            shard_loader(model, cfg, name, stage.batch_size, False, rank=0, world_size=1)
            for name in (cfg.train_set, cfg.dev_set)), speakers=True)


def readout_facts(stage: DictConfig, labels: Sequence[str]) -> dict | None:
    """The stage's read-out settings, its candidates the recipe's classes unless it names its own."""
    if not stage.get("readout"):
        return None
    readout = OmegaConf.to_container(stage.readout, resolve=True)
    readout["labels"] = list(readout.get("labels") or labels)
    return readout


def run(cfg: DictConfig, stage: DictConfig, fingerprint: str | None = None) -> Path:
    """Train one SFT stage (``stage`` = cfg.sft or cfg.distill); return the saved model dir.  ``fingerprint``
    (the stage's, local/bin/stages.py) decides whether a checkpoint of an earlier run may be resumed."""
    exp_dir = Path(stage.exp_dir)
    model_dir = exp_dir / "model"
    multitask = bool(stage.get("rounds"))
    types = list(stage_tasks(stage).values()) if multitask else [stage.explicit, stage.implicit]
    if stage.get("init_from"):
        model = load_alm(stage.init_from)
    else:
        model = build_alm(cfg.model, tokenizer=make_tokenizer(cfg, stage, types))
    model.facts = training_facts(model, stage, types, recipe_labels(cfg.corpus))
    facts = model.facts
    utts = train_subset(model, cfg, stage)
    if multitask:
        fit_feature_norm(model, cfg, stage)
        kl_weight = float(stage.get("kl_weight") or 0.0)
        if kl_weight:
            raise ValueError("kl_weight > 0 with rounds: the read-out KL is an emotion-only loss; not supported")
        run_rounds(model, cfg, stage, lambda k: shard_loaders(model, cfg, stage.batch_size, utts, seed=cfg.seed + k),
                   sft_loss, facts=facts, fingerprint=fingerprint)
        state = trained_state(model)
        on_main_process(lambda: save_alm(model, model_dir, state))
        log.info("saved %s", model_dir)
        return model_dir
    train, valid = shard_loaders(model, cfg, stage.batch_size, utts)
    fit_feature_norm(model, cfg, stage)
    trainer_cfg = OmegaConf.merge(cfg.trainer, stage.get("trainer") or {}, {"exp_dir": str(exp_dir)})
    total = planned_steps(TrainerConfig.from_config(trainer_cfg), train)  # the steps the trainer will take
    schedule = TargetSchedule(stage.schedule, stage.explicit, stage.implicit, total, cfg.seed)
    transcript = facts["transcript_in_prompt"]
    kl_weight = float(stage.get("kl_weight") or 0.0)
    net = model
    if kl_weight:
        if not facts.get("readout"):
            raise ValueError("kl_weight > 0 needs a readout (sft.readout): the KL is on the read-out distribution")
        net = ReadoutSFT(model, Readout(model.tokenizer, **facts["readout"]))
        log.info("loss = CE + %g * KL(soft label || read-out of %s after %r)", kl_weight,
                 ", ".join(net.readout.labels), net.readout.answer_prefix)

    trainer: Trainer | None = None

    def step_fn(m, batch):
        step = trainer.step if trainer is not None else 0
        target_type = schedule.pick(step)
        batch = sft_batch(batch, target_type, step, cfg.seed, transcript, facts)
        loss, logs = sft_loss(m, batch, kl_weight)
        return loss, {"p_explicit": schedule.p_explicit(step), **logs}

    def valid_fn(m, loader):
        out = {}
        for t in dict.fromkeys((stage.explicit, stage.implicit)):
            terms = [sft_loss(m, b, kl_weight)
                     for b in (sft_batch(b, t, 0, cfg.seed, transcript, facts) for b in loader) if b]
            out[f"loss_{t}"] = float(np.mean([float(loss) for loss, _ in terms]))
            for k in terms[0][1] if terms else ():
                out[f"{k}_{t}"] = float(np.mean([float(logs[k]) for _, logs in terms]))
        out["loss"] = float(np.mean([v for k, v in out.items() if k.startswith("loss_")]))
        return out

    trainer = Trainer(net, step_fn, trainer_cfg, run_config=OmegaConf.to_container(cfg, resolve=True),
                      fingerprint=fingerprint)
    trainer.fit(train, valid, valid_fn)
    trained = trainer.module.alm if kl_weight else trainer.module
    state = trained_state(trained)  # every rank: under FSDP this gathers the shards
    on_main_process(lambda: save_alm(trained, model_dir, state))
    log.info("saved %s", model_dir)
    return model_dir
