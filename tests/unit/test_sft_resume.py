"""Stage 6 killed mid-run and re-run: it resumes from its last checkpoint and ends where an
uninterrupted run does (the C²SER issue's must-show), through the stage's own entry point."""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from local.bin.sft import main as sft_main
from local.eval.decode import DataDirBatches
from local.models.alm import AudioLLM, build_alm
from local.train.sft import fit_feature_norm, make_tokenizer
from local.utils.hydra import compose
from tests.conftest import make_data_dir

STEPS = 6


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    """data/{train,dev} with C²SER explicit targets, as stages 0-3 would leave them."""
    root = tmp_path_factory.mktemp("recipe")
    for name, n_utt in (("train", 4), ("dev", 2)):
        shutil.move(make_data_dir(root / f"corpus_{name}", n_spk=2, n_utt=n_utt), root / "data" / name)
        utts = sorted((root / "data" / name / "utt2emo").read_text().splitlines())
        with open(root / "data" / name / "targets.jsonl", "w", encoding="utf-8") as f:
            for line in utts:
                utt, label = line.split()
                for kind, text in (("c2ser_explicit", f"The pitch is high. The emotion was inferred to be {label}."),
                                   ("c2ser_implicit", f"The emotion is {label}.")):
                    f.write(json.dumps({"utt": utt, "type": kind, "target": text, "label": label}) + "\n")
    return root


def stage_config(root, exp_name):
    return compose([f"data_root={root / 'data'}", f"dump_root={root / 'dump'}", f"exp_root={root / 'exp'}",
                    f"exp_name={exp_name}", "model.e2v.path=null", "sft.batch_size=3", "sft.tokenizer_vocab=300",
                    f"trainer.max_steps={STEPS}", "trainer.max_epochs=null", "trainer.save_every=2",
                    "trainer.lr=1e-3", "trainer.warmup=2", "trainer.log_every=1",
                    "trainer.progress=false", "seed=3"])


def train_losses(exp_dir) -> list[float]:
    records = map(json.loads, (exp_dir / "metrics.jsonl").read_text().splitlines())
    return [r["loss"] for r in records if r["split"] == "train"]


@pytest.mark.slow
def test_killed_sft_resumes_from_its_last_checkpoint(recipe, monkeypatch):
    sft_main(stage_config(recipe, "ref"))

    calls, forward = [], AudioLLM.forward

    def dies_in_step_5(self, batch):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return forward(self, batch)

    monkeypatch.setattr(AudioLLM, "forward", dies_in_step_5)
    with pytest.raises(KeyboardInterrupt):
        sft_main(stage_config(recipe, "run"))
    monkeypatch.setattr(AudioLLM, "forward", forward)
    run_dir = recipe / "exp" / "run" / "sft"
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["step"] == 4
    assert not (run_dir / "model").exists()  # the model dir appears only when the stage ends

    sft_main(stage_config(recipe, "run"))
    got, want = train_losses(run_dir), train_losses(recipe / "exp" / "ref" / "sft")
    assert len(want) == STEPS and all(math.isfinite(v) for v in want)
    assert got == pytest.approx(want, abs=1e-5)
    a = torch.load(run_dir / "model" / "trained.pt", weights_only=True)
    b = torch.load(recipe / "exp" / "ref" / "sft" / "model" / "trained.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in b:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0, msg=k)


def test_training_stages_normalise_by_each_speakers_train_and_dev_utterances(recipe):
    cfg = compose([f"data_root={recipe / 'data'}", f"dump_root={recipe / 'dump'}", f"exp_root={recipe / 'exp'}",
                   "exp_name=spk", "model.e2v.path=null", "model.feature_norm=speaker", "sft.batch_size=3",
                   "sft.tokenizer_vocab=300"])
    model = build_alm(cfg.model, tokenizer=make_tokenizer(cfg, cfg.sft))
    fit_feature_norm(model, cfg, cfg.sft)
    assert bool(model.feature_norm.fitted)
    frames = {}
    for split in ("train", "dev"):  # 4 + 2 utterances of each speaker: enough for statistics of their own
        for batch in DataDirBatches(recipe / "data" / split, batch_size=1):
            with torch.no_grad():
                x, n = model.encoder_features(batch, normalised=False)["whisper"]
            frames.setdefault(batch["meta"][0]["spk"], []).append(x[0, :int(n[0])])
    assert sorted(model.feature_norm.speakers) == sorted(frames)
    for spk, xs in frames.items():
        x = torch.cat(xs).double()
        mean, std = model.feature_norm.speakers[spk]["whisper"]
        torch.testing.assert_close(mean.double(), x.mean(0), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(std.double(), x.std(0, unbiased=False).clamp_min(1e-5), atol=1e-4, rtol=1e-4)
