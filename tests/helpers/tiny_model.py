"""A tiny trained-format model dir (save_alm) in seconds: what inference, export and the demo tests run.

Every part is the CPU recipe's (conf/model/c2ser_tiny.yaml: tiny Whisper, the tiny Emotion2Vec-S, tiny Qwen2,
speaker feature normalisation) with seeded random weights and no file outside the dir, so ``load_alm``
rebuilds it anywhere.  ``training.yaml`` is what stage 6 writes (training_facts): both C²SER target types,
the read-out, the label set.  ``steps`` teacher-forces the implicit answer a few times so the text names labels.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from local.data.labels import EMOTIONS
from local.models.alm import build_alm, save_alm
from local.models.tokenizer import train_tokenizer
from local.train.sft import training_facts
from local.utils.hydra import CONF_DIR


def tiny_model(root: Path, labels: Sequence[str] = EMOTIONS, overrides: Sequence[str] = (), seed: int = 0):
    """The unsaved model, its facts set as stage 6 sets them; its tokenizer is written to root/tokenizer."""
    texts = [f"The emotion was inferred to be {label}." for label in labels] * 4
    texts += ["Describe the speaking rate, pitch and volume, then infer the emotion.",
              "Which emotion does the speaker express?", "Distribution: " + " ".join(labels)] * 4
    tok = train_tokenizer(texts, vocab_size=300)
    tok.save_pretrained(root / "tokenizer")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR / "model"), version_base=None):
        cfg = compose("c2ser_tiny", overrides=["encoder.name_or_path=null", "llm.name_or_path=null",
                                               f"llm.tokenizer={root / 'tokenizer'}", "e2v.path=null",
                                               f"init_seed={seed}", *overrides])
    torch.manual_seed(seed)
    model = build_alm(cfg)
    stage = OmegaConf.create({"readout": {"answer_prefix": "\nDistribution:", "separator": " ", "labels": None}})
    model.facts = training_facts(model, stage, ["c2ser_explicit", "c2ser_implicit"], list(labels))
    return model


def teach(model, steps: int, seed: int = 0) -> None:
    """A few SFT steps on tones labelled by pitch: enough for the tiny LM to answer in the target's words."""
    rng = np.random.default_rng(seed)
    labels = model.facts["labels"]
    prompt = model.facts["targets"]["c2ser_implicit"]["text"]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.fit_feature_norm([{"wav": torch.from_numpy(rng.standard_normal((2, 8000)).astype(np.float32) * 0.1),
                             "wav_lens": torch.tensor([8000, 8000])}])
    model.train()
    for _ in range(steps):
        k = rng.integers(len(labels), size=4)
        t = np.arange(12000) / 16000
        wav = np.stack([0.3 * np.sin(2 * np.pi * (120 + 60 * i) * t) for i in k]).astype(np.float32)
        batch = {"wav": torch.from_numpy(wav), "wav_lens": torch.full((4,), 12000), "prompts": [prompt] * 4,
                 "responses": [f"The emotion was inferred to be {labels[i]}." for i in k]}
        loss = model(batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def tiny_model_dir(root: Path, labels: Sequence[str] = EMOTIONS, steps: int = 0, seed: int = 0) -> Path:
    """``root/model``: a model dir as stage 6 writes it (see the module doc)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    model = tiny_model(root, labels, seed=seed)
    if steps:
        teach(model, steps, seed)
    save_alm(model, root / "model")
    return root / "model"
