"""Training schedules as rounds (local/train/rounds.py): parsing, the epoch plan of every conf/schedule file,
and real AdamW steps on a tiny dual-encoder AudioLLM (MERaLiON adapters, trainable Whisper and Emotion2Vec-S,
LoRA) that change exactly the round's tensors and leave every other one bit-identical."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from local.models.alm import build_alm
from local.models.emotion2vec_s import build_e2v
from local.train.rounds import (PARAM_GROUPS, SCHEDULE_DIR, Round, apply_round, expand, load_schedule,
                                optimizer_params, parse_rounds, restore_trainable, task_epochs)
import test_alm
from test_alm import build_tiny, compose_model, make_batch

tiny_dirs = test_alm.tiny_dirs  # the tiny Whisper / LM fixture

DUAL = ("connector=meralion", "encoder.padding=30s", "encoder.downsample=1", "acoustic_downsample=1",
        "llm.finetune=lora", "encoder.freeze=false", "freeze_e2v=false")
SPEECH = Round(("asr", "sqa"), ("speech_encoder", "speech_adapter", "lm"), 1, "speech")   # as conf/schedule/ names them
EMOTION = Round(("er", "sr"), ("emotion_encoder", "emotion_adapter", "lm"), 1, "emotion")
FINAL = Round(("all",), ("adapters", "lm"), 1, "final")
TASKS = ("asr", "sqa", "er", "sr")


def dual(tiny_dirs, *overrides):
    return build_tiny(tiny_dirs, *DUAL, *overrides, acoustic=build_e2v(None, "tiny"))


def snapshot(model) -> dict[str, torch.Tensor]:
    """Every tensor of the model: its state dict and every buffer (non-persistent ones too)."""
    out = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out.update({f"buffer:{k}": v.detach().clone() for k, v in model.named_buffers()})
    return out


def in_groups(model, groups) -> set[str]:
    return {n for n, _ in model.named_parameters() if any(PARAM_GROUPS[g](n) for g in groups)}


def test_each_round_changes_exactly_its_groups_and_nothing_else(tiny_dirs):
    model = dual(tiny_dirs)
    built = {n for n, p in model.named_parameters() if p.requires_grad}
    batch = make_batch()
    torch.manual_seed(0)
    for rnd in (SPEECH, EMOTION, FINAL):  # Alt x's order; a fresh AdamW per round
        counts = apply_round(model, rnd)
        assert set(counts) == set(rnd.train) and all(counts.values())
        assert model.semantic.training == ("speech_encoder" in rnd.train)   # frozen encoders: eval mode
        assert model.acoustic.training == ("emotion_encoder" in rnd.train)
        opt = torch.optim.AdamW(optimizer_params(model), lr=1e-3, weight_decay=0.01)
        before = snapshot(model)
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            model(batch).loss.backward()
            assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
            opt.step()
        after = snapshot(model)
        changed = {k for k in before if not torch.equal(before[k], after[k])}
        assert changed == in_groups(model, rnd.train) & built, rnd.name
        assert any(n.startswith("lm.") and ".lora_" in n for n in changed)
        assert all(".lora_" in n for n in changed if n.startswith("lm."))  # the LLM's base never moves
    restore_trainable(model)  # what save_alm must see: every built-trainable tensor, encoders included
    assert {n for n, p in model.named_parameters() if p.requires_grad} == built
    assert model.semantic.training and model.acoustic.training


def test_adamw_moves_a_frozen_tensor_only_through_a_gradient_tensor():
    """The claim of rounds.py's docstring, for this torch: state alone does not move a tensor whose grad is
    None; a zero grad does (decoupled decay and the stale first moment)."""
    for foreach in (False, True):
        p = nn.Parameter(torch.ones(4))
        opt = torch.optim.AdamW([p], lr=0.1, weight_decay=0.01, foreach=foreach)
        p.grad = torch.ones(4)
        opt.step()
        p.requires_grad_(False)
        before = p.detach().clone()
        p.grad = None
        opt.step()
        assert torch.equal(p, before)
        p.grad = torch.zeros(4)
        opt.step()
        assert (p < before).all()


def test_a_group_that_selects_nothing_is_refused(tiny_dirs):
    single = build_alm(compose_model("c2ser_tiny", [f"encoder.name_or_path={tiny_dirs['whisper']}",
                                                    f"llm.name_or_path={tiny_dirs['lm']}", *DUAL]))
    assert single.acoustic is None
    with pytest.raises(ValueError, match="'emotion_encoder' selects no parameter"):
        apply_round(single, EMOTION)
    with pytest.raises(ValueError, match="'fused_adapter' selects no parameter"):
        apply_round(single, Round(("all",), ("fused_adapter",), 1, "fused"))
    frozen = build_tiny(tiny_dirs, *DUAL, "encoder.freeze=true")  # the model config says Whisper never trains
    with pytest.raises(ValueError, match="'speech_encoder' selects only parameters the model was built frozen"):
        apply_round(frozen, SPEECH)
    counts = apply_round(frozen, Round(("all",), ("lm",), 1, "lm"))  # LoRA's base stays frozen under 'lm'
    assert counts["lm"] == sum(p.numel() for n, p in frozen.named_parameters() if ".lora_" in n)


@pytest.mark.parametrize("rounds, match", [
    ([{"tasks": "er", "train": "lora", "epochs": 1}, {"tasks": ["asr"], "train": ["decoder"], "epochs": 1}],
     r"round 1: 'train' names unknown parameter group 'decoder'"),
    ([{"tasks": ["er"], "train": ["lora"], "epochs": 0}], r"round 0: 'epochs' must be an integer >= 1"),
    ([{"tasks": ["er"], "train": ["lora"], "epochs": True}], r"round 0: 'epochs'"),
    ([{"tasks": [], "train": ["lora"], "epochs": 1}], r"round 0: 'tasks' is empty"),
    ([{"tasks": ["er"], "train": [], "epochs": 1}], r"round 0: 'train' is empty"),
    ([{"tasks": ["er"], "train": ["lora"], "epochs": 1, "lr": 1e-4}], r"round 0: unknown key\(s\) \['lr'\]"),
    ([{"tasks": ["er"], "train": ["lora"]}], r"round 0: missing key 'epochs'"),
    ([{"tasks": ["er"], "train": ["lora"], "epochs": 1, "name": "a"}] * 2, r"round 1: 'name'"),
    ([], "non-empty"),
])
def test_parse_errors_name_the_round_and_key(rounds, match):
    with pytest.raises(ValueError, match=match):
        parse_rounds(rounds)


def test_parse_resolves_task_aliases_and_reads_omegaconf():
    rounds = parse_rounds(OmegaConf.create([{"tasks": ["speech", "er"], "train": ["lora"], "epochs": 2},
                                            {"tasks": ["emotion", "all"], "train": "adapters", "epochs": 1}]))
    assert rounds == [Round(("asr", "sqa", "er"), ("lora",), 2, "round0"), Round(("all",), ("adapters",), 1, "round1")]
    assert [(e, r.name) for e, r in expand(rounds)] == [(0, "round0"), (1, "round0"), (2, "round1")]


@pytest.mark.parametrize("name, order, seen", [
    ("joint", ["joint"] * 5, dict.fromkeys(TASKS, 5)),
    ("alt1", [f"{s}{i}" for i in range(1, 5) for s in ("speech", "emotion")] + ["final"], dict.fromkeys(TASKS, 5)),
    ("alt4", ["speech"] * 4 + ["emotion"] * 4 + ["final"], dict.fromkeys(TASKS, 5)),
    ("inject", ["emotion"] * 4 + ["final"], {"asr": 1, "sqa": 1, "er": 5, "sr": 5}),
])
def test_schedule_files_give_the_papers_epochs(name, order, seen):
    rounds = load_schedule(name)
    plan = expand(rounds)
    assert [r.name for _, r in plan] == order and [e for e, _ in plan] == list(range(len(order)))
    assert task_epochs(rounds, TASKS) == seen  # B.5 Reading A: each task set reads 4 + 1 epochs
    for r in rounds:  # a speech round trains the speech side, an emotion round the mirror, the final adapters + LoRA
        side = "speech" if r.tasks == ("asr", "sqa") else "emotion" if r.tasks == ("er", "sr") else None
        assert r.train == ((f"{side}_encoder", f"{side}_adapter", "lm") if side else
                           ("speech_encoder", "speech_adapter", "emotion_encoder", "emotion_adapter", "lm")
                           if name == "joint" else ("adapters", "lm"))


def test_every_schedule_file_fits_the_dual_encoder_model(tiny_dirs):
    files = sorted(SCHEDULE_DIR.glob("*.yaml"))
    assert {"joint", "alt1", "alt4", "inject", "single"} <= {f.stem for f in files}
    model = dual(tiny_dirs)
    for path in files:
        for r in load_schedule(path):
            assert all(apply_round(model, r).values()), (path.name, r.name)


def test_feature_concat_has_one_adapter_that_each_side_trains(tiny_dirs):
    """Fig. 4a: one adapter over both encoders' frames; a speech round trains it with the speech encoder, an
    emotion round with the emotion encoder (the Alt schedules of Table 2's "Feature" rows)."""
    model = dual(tiny_dirs, "fusion=feature_concat")
    fused = {n for n, _ in model.named_parameters() if n.startswith("connectors.fused.")}
    assert fused
    for rnd, encoder in ((SPEECH, "semantic."), (EMOTION, "acoustic.")):
        apply_round(model, rnd)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert fused <= trainable and any(n.startswith(encoder) for n in trainable)
