"""Emotion2Vec-S pre-training: the objective's pieces against formulas and references, the stage's resume."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from helpers.reference import import_pml_losses, require
from local.data.shards import write_shards
from local.models.e2v_pretrain import (Decoder1d, Emotion2VecPretrainer, PretrainConfig, block_mask, ema_decay,
                                       frame_targets, official_decoder_state, standardize, supcon_loss)
from local.models.emotion2vec_s import Emotion2VecConfig, Emotion2VecS
from local.train.loop import Trainer
from local.train.pretrain import build_pretrainer, label_ids, labelled_subset, run
from local.utils.hydra import compose

from conftest import make_data_dir
from test_emotion2vec import build_reference, funasr_emotion2vec, tiny_conf, write_release  # noqa: F401

TINY_OBJECTIVE = PretrainConfig(clone_batch=2, decoder_dim=16, decoder_groups=4, decoder_layers=2)


def khosla_supcon(z: torch.Tensor, labels: list[int], tau: float) -> torch.Tensor:
    """Khosla et al. (2020) eq. 2 (L_out), written out: anchors are the labelled rows with a positive."""
    z = F.normalize(z, dim=-1)
    rows = [i for i, y in enumerate(labels) if y >= 0]
    per_anchor = []
    for i in rows:
        others = [a for a in rows if a != i]
        positives = [p for p in others if labels[p] == labels[i]]
        if not positives:
            continue
        denominator = sum(torch.exp(z[i] @ z[a] / tau) for a in others)
        terms = [torch.log(torch.exp(z[i] @ z[p] / tau) / denominator) for p in positives]
        per_anchor.append(-sum(terms) / len(positives))
    return sum(per_anchor) / len(per_anchor)


def test_supcon_equals_the_khosla_formula():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(11, 6, generator=g, dtype=torch.float64)
    labels = [0, 1, 0, 2, 1, 0, -1, 3, 2, -1, 1]  # class 3 has no positive; -1 unlabelled
    for tau in (0.07, 0.5):
        got = supcon_loss(z, torch.tensor(labels), tau)
        assert abs(float(got) - float(khosla_supcon(z, labels, tau))) < 1e-6


def test_supcon_equals_pytorch_metric_learning():
    """pml's SupConLoss(temperature=τ) with its defaults (CosineSimilarity, AvgNonZeroReducer) is the same
    loss when every row is labelled and the batch has at least two classes: then each anchor with a
    positive has a negative too, so its loss is > 0 and AvgNonZero averages exactly over the anchors
    with a positive (those without one have loss 0 in pml and are skipped here)."""
    losses = require("pytorch-metric-learning", import_pml_losses)  # a missing reference fails, never skips
    g = torch.Generator().manual_seed(1)
    z = torch.randn(16, 8, generator=g)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 3, 1, 2, 0, 1, 4, 2, 0, 1])  # 3 and 4: single members
    for tau in (0.1, 0.3):
        want = losses.SupConLoss(temperature=tau)(z, labels)
        assert abs(float(supcon_loss(z, labels, tau)) - float(want)) < 1e-5


def test_unlabelled_utterances_do_not_touch_the_category_loss():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(8, 5, generator=g, requires_grad=True)
    labels = torch.tensor([0, 1, -1, 0, 1, -1, 2, 2])
    loss = supcon_loss(z, labels, 0.1)
    loss.backward()
    assert z.grad[labels < 0].abs().sum() == 0 and z.grad[labels >= 0].abs().sum() > 0
    moved = z.detach().clone()
    moved[labels < 0] = torch.randn(2, 5, generator=g) * 10
    assert supcon_loss(moved, labels, 0.1).item() == pytest.approx(loss.item(), abs=1e-7)
    none = supcon_loss(z, torch.tensor([0, 1, -1, 2, 3, -1, 4, 5]), 0.1)  # no anchor has a positive
    assert none.item() == 0 and none.requires_grad


@pytest.mark.parametrize("standardize", [False, True])
def test_an_unlabelled_utterance_leaves_the_category_loss_of_a_batch_unchanged(standardize):
    """Through the whole objective: other audio in the unlabelled row moves L_frm, not L_cate."""
    torch.manual_seed(0)
    model = Emotion2VecPretrainer(Emotion2VecS(Emotion2VecConfig.preset("tiny")),
                                  replace(TINY_OBJECTIVE, cate_standardize=standardize)).eval()
    wav, lengths, labels = torch.randn(5, 6000), torch.tensor([6000, 5000, 6000, 4000, 5500]), torch.tensor(
        [0, 1, -1, 0, 1])
    other = wav.clone()
    other[2] = torch.randn(6000)
    logs = []
    for audio in (wav, other):
        torch.manual_seed(1)
        logs.append(model(audio, lengths, labels)[1])
    assert logs[0]["loss_cate"].item() == pytest.approx(logs[1]["loss_cate"].item(), abs=1e-6)
    assert logs[0]["loss_frm"].item() != pytest.approx(logs[1]["loss_frm"].item(), abs=1e-4)


def test_standardize_is_batch_norm_without_affine():
    x = torch.randn(9, 5) * 3 + 7
    want = torch.nn.functional.batch_norm(x, None, None, training=True, eps=1e-5)
    torch.testing.assert_close(standardize(x), want, atol=1e-5, rtol=0)


def test_labels_of_a_batch_unknown_and_hidden_are_unlabelled():
    batch = {"utts": ["a", "b", "c", "d", "e"],
             "meta": [{"label": "fear"}, {"label": "unknown"}, {}, {"label": "anger"}, {"label": "fear"}]}
    assert label_ids(batch, None).tolist() == [1, -1, -1, 0, 1]
    assert label_ids(batch, {"a", "d"}).tolist() == [1, -1, -1, 0, -1]
    utts = [f"u{i:02d}" for i in range(40)]
    chosen = labelled_subset(utts, 0.25, seed=3)
    assert len(chosen) == 10 and chosen == labelled_subset(reversed(utts), 0.25, seed=3)
    assert chosen != labelled_subset(utts, 0.25, seed=4) and labelled_subset(utts, 1.0, 0) is None


def test_block_mask_same_count_blocks_and_no_padding():
    torch.manual_seed(0)
    lengths = torch.tensor([50, 37, 12, 50, 23])
    for _ in range(20):
        mask = block_mask(lengths, 50, prob=0.5, length=5)
        counts = mask.sum(1)
        assert (counts == counts[0]).all() and counts[0] >= 1
        for row, n in enumerate(lengths.tolist()):
            assert not mask[row, n:].any()          # padding is never masked ...
            assert (~mask[row, :n]).sum() >= 1      # ... and every row keeps a real frame
    # one row: nothing to equalise, so the masked frames are whole blocks (runs of >= 5 frames)
    fractions = []
    for _ in range(50):
        row = block_mask(torch.tensor([200]), 200, prob=0.5, length=5)[0].tolist()
        runs, current = [], 0
        for masked in row + [False]:
            if masked:
                current += 1
            elif current:
                runs.append(current)
                current = 0
        assert runs and min(runs) >= 5
        fractions.append(sum(row) / 200)
    # starts are ~ prob·L/length distinct positions: 1 - (1 - 0.1)^5 ≈ 0.41 of the frames are covered
    assert 0.33 < sum(fractions) / len(fractions) < 0.47


def test_masked_student_marks_kept_padding_as_padding():
    torch.manual_seed(0)
    model = Emotion2VecS(Emotion2VecConfig.preset("tiny")).eval()
    lengths = torch.tensor([40, 25, 31])
    mask = block_mask(lengths, 40, 0.5, 5)
    out = model.encode(torch.randn(3, 40, 64), lengths, mask)
    valid = torch.arange(40)[None, :] < lengths[:, None]
    n = model.config.num_extra_tokens
    assert torch.equal(out.padding_mask[:, n:], ~valid.gather(1, out.kept))
    assert not (mask.gather(1, out.kept)).any()


def test_ema_schedule_and_update_formula():
    assert ema_decay(0, 0.999, 0.99999, 100) == 0.999
    assert ema_decay(50, 0.999, 0.99999, 100) == pytest.approx((0.999 + 0.99999) / 2, abs=1e-12)
    assert ema_decay(100, 0.999, 0.99999, 100) == 0.99999
    assert ema_decay(10**6, 0.999, 0.99999, 100) == 0.99999
    torch.manual_seed(0)
    model = Emotion2VecPretrainer(Emotion2VecS(Emotion2VecConfig.preset("tiny")),
                                  replace(TINY_OBJECTIVE, ema_decay=0.9, ema_end_decay=0.99, ema_anneal_steps=4))
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(torch.randn_like(p))
    for step in range(6):
        teacher = [p.clone() for p in model.teacher.parameters()]
        decay = model.update_teacher()
        assert decay == pytest.approx(0.9 + (0.99 - 0.9) * min(step, 4) / 4)
        for t0, t1, s in zip(teacher, model.teacher.parameters(), model.student.parameters()):
            torch.testing.assert_close(t1, decay * t0 + (1 - decay) * s.detach(), atol=1e-6, rtol=0)
    assert int(model.ema_updates) == 6


def test_teacher_is_not_trained_and_stays_in_eval_mode(tmp_path):
    model = Emotion2VecPretrainer(Emotion2VecS(Emotion2VecConfig.preset("tiny")), TINY_OBJECTIVE)
    trainer = Trainer(model, lambda m, b: None, {"exp_dir": str(tmp_path), "max_steps": 1, "progress": False})
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in optimised for p in model.teacher.parameters())
    assert all(id(p) in optimised for p in model.student.parameters() if p.requires_grad)
    model.train()
    assert model.student.training and not model.teacher.training
    assert any(k.startswith("teacher.") for k in model.state_dict()) and "ema_updates" in model.state_dict()


def test_frame_targets_by_hand():
    g = torch.Generator().manual_seed(0)
    layers = [torch.randn(2, 9, 4, generator=g) * (i + 1) + i for i in range(3)]
    lengths = [9, 6]
    valid = torch.arange(9)[None, :] < torch.tensor(lengths)[:, None]
    got = frame_targets(layers, valid, top_k=2)
    for b, n in enumerate(lengths):
        normed = []
        for layer in layers[1:]:
            x = layer[b, :n]
            normed.append((x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-5))
        torch.testing.assert_close(got[b, :n], sum(normed) / 2, atol=1e-5, rtol=0)
        assert not got[b, n:].any()
    full = torch.ones(2, 9, dtype=torch.bool)  # without padding: torch's instance norm
    want = sum(F.instance_norm(x.transpose(1, 2)).transpose(1, 2) for x in layers[1:]) / 2
    torch.testing.assert_close(frame_targets(layers, full, 2), want, atol=1e-5, rtol=0)


def test_objective_runs_and_padding_does_not_change_an_utterance():
    torch.manual_seed(0)
    model = Emotion2VecPretrainer(Emotion2VecS(Emotion2VecConfig.preset("tiny")),
                                  replace(TINY_OBJECTIVE, clone_batch=1)).eval()
    wav = torch.randn(1, 8000)
    labels = torch.tensor([0])
    torch.manual_seed(5)
    alone, _ = model(wav, torch.tensor([8000]), labels)
    torch.manual_seed(5)  # the same mask: the padded row is as long in frames as the real one
    padded = torch.cat([wav, torch.zeros(1, 3000)], 1)
    batch_loss, logs = model(padded, torch.tensor([8000]), labels)
    assert batch_loss.item() == pytest.approx(alone.item(), abs=1e-5)
    assert set(logs) == {"loss_frm", "loss_utt", "loss_cate", "masked", "labelled"}


def test_decoder_equals_funasr_decoder1d(funasr_emotion2vec):  # noqa: F811
    from funasr.models.emotion2vec.modules import D2vDecoderConfig
    from funasr.models.emotion2vec.modules import Decoder1d as Reference
    for kernel, dim in ((7, 32), (4, 64)):  # 64: the first block gets a residual too
        torch.manual_seed(0)
        ref = Reference(D2vDecoderConfig(decoder_dim=dim, decoder_groups=4, decoder_kernel=kernel,
                                         decoder_layers=3), 64).eval()
        ours = Decoder1d(64, dim, kernel, 3, 4)
        state = official_decoder_state({f"modality_encoders.AUDIO.decoder.{k}": v
                                        for k, v in ref.state_dict().items()})
        ours.load_state_dict(state)
        x = torch.randn(2, 30, 64)
        torch.testing.assert_close(ours(x, torch.ones(2, 30, dtype=torch.bool)), ref(x, None), atol=1e-5, rtol=0)


def test_continued_pretraining_keeps_the_checkpoint_decoder(funasr_emotion2vec, tmp_path):  # noqa: F811
    conf = tiny_conf()
    ref = build_reference(funasr_emotion2vec, conf)
    release = write_release(tmp_path / "release", conf, ref.state_dict())
    model = build_pretrainer(str(release), None, PretrainConfig(), init_seed=0)
    assert (model.config.decoder_dim, model.config.decoder_layers, model.config.decoder_groups) == (32, 2, 4)
    decoder = ref.modality_encoders["AUDIO"].decoder.state_dict()
    torch.testing.assert_close(model.decoder.blocks[1].conv.weight, decoder["blocks.1.0.weight"])
    torch.testing.assert_close(model.decoder.proj.bias, decoder["proj.bias"])
    for t, s in zip(model.teacher.state_dict().values(), model.student.state_dict().values()):
        assert torch.equal(t, s)  # no EMA in the checkpoint: the teacher starts as the student

    # a data2vec 2.0 training checkpoint keeps its EMA teacher (without CNN and decoder) under "_ema"
    state = ref.state_dict()
    state["_ema"] = {k: v + 0.5 for k, v in state.items()
                     if not any(part in k for part in ("decoder.", "local_encoder.", "project_features."))}
    model = build_pretrainer(str(write_release(tmp_path / "training", conf, state)), None, PretrainConfig(), 0)
    teacher, student = model.teacher.state_dict(), model.student.state_dict()
    torch.testing.assert_close(teacher["blocks.1.mlp.fc2.weight"], student["blocks.1.mlp.fc2.weight"] + 0.5)
    torch.testing.assert_close(teacher["extra_tokens"], student["extra_tokens"] + 0.5)
    torch.testing.assert_close(teacher["pos_layers.0.conv.weight"], student["pos_layers.0.conv.weight"] + 0.5)
    assert torch.equal(teacher["feature_proj.weight"], student["feature_proj.weight"])


# --- the stage: kill and resume ---------------------------------------------------------------------

def stage_config(shards, exp_dir, max_steps, save_every, schedule):
    return compose([f"pretrain.trainer.schedule={schedule}", f"pretrain.exp_dir={exp_dir}",
                    f"pretrain.train_shards={shards}",
                    "pretrain.valid_shards=null", "pretrain.size=tiny", "pretrain.clone_batch=2",
                    "pretrain.decoder_dim=16", "pretrain.decoder_groups=4", "pretrain.decoder_layers=2",
                    "pretrain.ema_anneal_steps=4", "pretrain.loader.batch_size=4", "pretrain.loader.num_workers=0",
                    "pretrain.lambda_cate=1.0", "pretrain.temperature=0.5",
                    f"pretrain.trainer.max_steps={max_steps}", "pretrain.trainer.warmup=2",
                    f"pretrain.trainer.save_every={save_every}", "trainer.log_every=1", "trainer.progress=false",
                    "pretrain.trainer.lr=1e-3", "pretrain.trainer.grad_accum=1",
                    "seed=7"])


def losses(exp_dir) -> list[float]:
    lines = (exp_dir / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["split"] == "train"]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["stop_and_rerun", "killed"])
def test_killed_pretraining_resumes_to_the_same_loss(tmp_path, monkeypatch, how):
    """An interrupted stage re-run ends where an uninterrupted one does: every step's loss, the student,
    the EMA teacher and its step counter agree to 1e-5 (float32 on CPU; in practice they are equal).
    A run stopped by max_steps=3 and re-run with 6 uses a constant lr (a cosine schedule depends on
    max_steps); the run killed inside step 5 (last checkpoint: step 4) uses the stage's cosine."""
    schedule = "constant" if how == "stop_and_rerun" else "cosine"
    data = make_data_dir(tmp_path, n_spk=2, n_utt=6)
    write_shards(data, tmp_path / "shards", max_shard_size=4)
    steps = 6
    run(stage_config(tmp_path / "shards", tmp_path / "ref", steps, 2, schedule))
    if how == "stop_and_rerun":
        run(stage_config(tmp_path / "shards", tmp_path / "run", 3, 100, schedule))
    else:
        calls, forward = [], Emotion2VecPretrainer.forward

        def dies_in_step_5(self, *args):
            calls.append(1)
            if len(calls) == 5:
                raise KeyboardInterrupt
            return forward(self, *args)

        monkeypatch.setattr(Emotion2VecPretrainer, "forward", dies_in_step_5)
        with pytest.raises(KeyboardInterrupt):
            run(stage_config(tmp_path / "shards", tmp_path / "run", steps, 2, schedule))
        monkeypatch.setattr(Emotion2VecPretrainer, "forward", forward)
        assert torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)["step"] == 4
    run(stage_config(tmp_path / "shards", tmp_path / "run", steps, 2, schedule))

    got, want = losses(tmp_path / "run"), losses(tmp_path / "ref")
    assert len(got) == len(want) == steps and all(math.isfinite(v) for v in want)
    assert got == pytest.approx(want, abs=1e-5)
    a = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "ref/checkpoints/last.pt", weights_only=True)["model"]
    assert int(a["ema_updates"]) == steps and any(k.startswith("teacher.") for k in a)
    for k in b:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0, msg=k)
    final = Emotion2VecS.from_pretrained(tmp_path / "run/model").state_dict()
    for k, v in final.items():
        torch.testing.assert_close(v, b[f"student.{k}"], atol=1e-5, rtol=0)
    init = Emotion2VecS.from_pretrained(tmp_path / "ref/init").state_dict()
    assert all(torch.equal(v, Emotion2VecS.from_pretrained(tmp_path / "run/init").state_dict()[k])
               for k, v in init.items())
