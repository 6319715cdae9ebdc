"""Training schedules as data: a list of *rounds*, each (tasks, trainable parameter groups, epochs).

AudioLLM-Reasoning trains one model under several schedules (§3.3, §6; shared/reasoning_system.md B.5):
joint (every task, every encoder + adapter + LoRA), task-alternating "Alt x" (speech rounds train the
speech side, emotion rounds the emotion side, then a final all-task round of adapters + LoRA) and
emotion injection.  They differ only in *which data* and *which parameters* each epoch sees, so they
are config (``conf/schedule/*.yaml``), not code: adding a schedule is a YAML file, adding a parameter
group one entry of :data:`PARAM_GROUPS`.

What may ever train is the model config's (``encoder.freeze``, ``freeze_e2v``, ``llm.finetune``):
:func:`apply_round` only ever trains a subset of the parameters the model was *built* trainable.  That
keeps :func:`local.models.alm.save_alm` / ``load_alm`` right (they save and expect exactly the
built-trainable tensors: call :func:`restore_trainable` before saving) and keeps LoRA's frozen base
weights frozen under the ``lm`` group.

Optimizer (checked in torch 2.9.1, ``torch/optim/adam.py``): ``AdamW`` is ``Adam`` with
``decoupled_weight_decay=True``, and ``Adam._init_group`` collects only parameters whose ``.grad is not
None``; the decoupled decay (``param.mul_(1 - lr * wd)``) and the moment step run on those alone (single-
tensor, foreach and fused paths).  So a frozen tensor whose ``.grad`` is ``None`` does *not* move, even
with stale ``exp_avg`` state.  It *does* move if its ``.grad`` is a zero tensor instead of ``None``
(``zero_grad(set_to_none=False)``, or a gradient left from before it was frozen): weight decay shrinks it
and the stale first moment keeps stepping it (tests/unit/test_rounds.py shows both).  The trainer sets
grads to ``None``, but a schedule must not hang on that; and stale moments of a round two rounds back
(Alt 1: S, E, S, E) and the frozen side's moments in memory are not wanted either.  Hence: build a fresh
AdamW over :func:`optimizer_params` at every round boundary (every group's moments restart; LoRA's too).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch.nn as nn
from omegaconf import ListConfig, OmegaConf

from local.reasoning.tasks import task_groups
from local.utils.hydra import CONF_DIR

SCHEDULE_DIR = CONF_DIR / "schedule"


def _under(*prefixes: str) -> Callable[[str], bool]:
    return lambda name: name.startswith(prefixes)


# name -> predicate over AudioLLM parameter names (unwrapped model: no DDP "module." prefix).
PARAM_GROUPS: dict[str, Callable[[str], bool]] = {
    "speech_encoder": _under("semantic."),                       # Whisper front end
    # fusion=feature_concat has one adapter over both encoders' frames: it is each side's adapter
    "speech_adapter": _under("connectors.semantic.", "connectors.fused."),
    "emotion_encoder": _under("acoustic."),                      # Emotion2Vec(-S), emotion2vec+
    "emotion_adapter": _under("connectors.acoustic.", "utterance_proj.", "connectors.fused."),
    "fused_adapter": _under("connectors.fused."),                # fusion=feature_concat
    "adapters": _under("connectors.", "utterance_proj."),        # every connector
    "lora": lambda name: name.startswith("lm.") and ".lora_" in name,
    # the LLM's trainable part: its LoRA adapters under llm.finetune=lora (the paper; the base is built
    # frozen), every weight under full (the tiny CPU LM): schedules name this one
    "lm": _under("lm."),
}

ALL = "all"


def task_aliases() -> dict[str, tuple[str, ...]]:
    """Names usable in a round's ``tasks`` besides the tasks themselves: each task group of the registry
    (local/reasoning/tasks.py: speech = asr, sqa; emotion = er, sr; a plugin's task joins its group) and ``all``."""
    return {**task_groups(), ALL: (ALL,)}
KEYS = ("tasks", "train", "epochs", "name")
_SCHEDULABLE = "_rounds_schedulable"  # attribute caching the parameters the model was built trainable


@dataclass(frozen=True)
class Round:
    """``epochs`` epochs over the data of ``tasks`` (resolved names, or ``("all",)``) updating only the
    parameter groups ``train``."""

    tasks: tuple[str, ...]
    train: tuple[str, ...]
    epochs: int
    name: str = ""

    def covers(self, task: str) -> bool:
        return ALL in self.tasks or task in self.tasks


def _names(value, where: str, key: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) and v for v in items):
        raise ValueError(f"{where}: '{key}' must be a name or a list of names, got {value!r}")
    if not items:
        raise ValueError(f"{where}: '{key}' is empty")
    return list(items)


def parse_rounds(cfg: Sequence[dict] | ListConfig) -> list[Round]:
    """Rounds from config (a schedule file's ``rounds``); an error names the round index and the key."""
    if isinstance(cfg, ListConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(cfg, (list, tuple)) or not cfg:
        raise ValueError(f"a schedule is a non-empty list of rounds, got {cfg!r}")
    rounds = []
    aliases = task_aliases()
    for i, item in enumerate(cfg):
        where = f"schedule round {i}"
        if OmegaConf.is_config(item):
            item = OmegaConf.to_container(item, resolve=True)
        if not isinstance(item, dict):
            raise ValueError(f"{where}: a round is a mapping with keys {KEYS}, got {item!r}")
        unknown = sorted(set(item) - set(KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; a round has {KEYS}")
        missing = [k for k in KEYS[:3] if k not in item]
        if missing:
            raise ValueError(f"{where}: missing key '{missing[0]}'")
        tasks: list[str] = []
        for t in _names(item["tasks"], where, "tasks"):
            tasks += [r for r in aliases.get(t, (t,)) if r not in tasks]
        train = _names(item["train"], where, "train")
        for group in train:
            if group not in PARAM_GROUPS:
                raise ValueError(f"{where}: 'train' names unknown parameter group '{group}' "
                                 f"(known: {', '.join(PARAM_GROUPS)})")
        epochs = item["epochs"]
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"{where}: 'epochs' must be an integer >= 1, got {epochs!r}")
        name = item.get("name") or f"round{i}"
        if not isinstance(name, str) or name in {r.name for r in rounds}:
            raise ValueError(f"{where}: 'name' must be a string unique in the schedule, got {name!r}")
        rounds.append(Round((ALL,) if ALL in tasks else tuple(tasks), tuple(dict.fromkeys(train)), epochs, name))
    return rounds


def load_schedule(name_or_path: str | Path) -> list[Round]:
    """The rounds of ``conf/schedule/<name>.yaml`` or of a YAML file with a ``rounds`` list."""
    path = Path(name_or_path)
    if not path.suffix:
        path = SCHEDULE_DIR / f"{name_or_path}.yaml"
    return parse_rounds(OmegaConf.load(path).rounds)


def expand(rounds: Iterable[Round]) -> list[tuple[int, Round]]:
    """The epoch-by-epoch plan ``[(epoch, round), ...]``: a trainer runs epoch ``e`` under ``plan[e][1]``
    (a resumed run too), and a round boundary is where the round's name changes."""
    return list(enumerate(r for r in rounds for _ in range(r.epochs)))


def task_epochs(rounds: Iterable[Round], tasks: Iterable[str]) -> dict[str, int]:
    """How many epochs of each task's data the schedule reads (a round of ``all`` reads every task)."""
    rounds = list(rounds)
    return {t: sum(r.epochs for r in rounds if r.covers(t)) for t in tasks}


def schedulable(model: nn.Module) -> frozenset[str]:
    """The parameters the model was built trainable, recorded the first time a schedule touches it."""
    names = getattr(model, _SCHEDULABLE, None)
    if names is None:
        names = frozenset(n for n, p in model.named_parameters() if p.requires_grad)
        setattr(model, _SCHEDULABLE, names)
    return names


def apply_round(model: nn.Module, rnd: Round) -> dict[str, int]:
    """Make exactly the round's groups trainable (within what the model was built trainable), everything
    else frozen, every ``.grad`` cleared; ``model.train()`` then puts frozen encoders in eval mode
    (AudioLLM.train), and they run without autograd.  Returns ``{group: trainable parameters}`` for the
    log.  A group that selects no parameter of this model, or only ones it was built frozen, is an error
    naming it."""
    allowed = schedulable(model)
    params = dict(model.named_parameters())
    chosen: set[str] = set()
    counts = {}
    for group in rnd.train:
        if group not in PARAM_GROUPS:
            raise ValueError(f"round '{rnd.name}': unknown parameter group '{group}' "
                             f"(known: {', '.join(PARAM_GROUPS)})")
        names = {n for n in params if PARAM_GROUPS[group](n)}
        if not names:
            raise ValueError(f"round '{rnd.name}': parameter group '{group}' selects no parameter of this model "
                             f"(it has {sorted({n.split('.')[0] for n in params})})")
        names &= allowed
        if not names:
            raise ValueError(f"round '{rnd.name}': parameter group '{group}' selects only parameters the model "
                             "was built frozen: make them trainable in the model config (encoder.freeze=false, "
                             "freeze_e2v=false, llm.finetune); the schedule decides when they train, not whether")
        counts[group] = sum(params[n].numel() for n in names)
        chosen |= names
    for n, p in params.items():
        p.requires_grad_(n in chosen)
        p.grad = None  # a round starts clean: a leftover grad would move a frozen tensor (module docstring)
    model.train()
    return counts


def restore_trainable(model: nn.Module) -> None:
    """Every built-trainable parameter trainable again: before ``trained_state``/``save_alm`` (which save
    the trainable tensors: a speech encoder trained in round 1 and frozen in the final round must be saved),
    before building loaders (the feature cache skips frozen encoders) and for a trainer-wide param list."""
    allowed = schedulable(model)
    for n, p in model.named_parameters():
        p.requires_grad_(n in allowed)
    model.train()


def optimizer_params(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of the current round (requires_grad): build a fresh AdamW over them at every round
    boundary (module docstring: why)."""
    return [p for p in model.parameters() if p.requires_grad]
