"""Export: a trained model dir made self-contained, then loaded with its recipe deleted, in a fresh process.

The models are tiny and random, their "training" a seeded perturbation of every trainable tensor
(LoRA's B included, which starts at zero), so that a part the export forgot would show in the outputs.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import (AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM, WhisperConfig,
                          WhisperFeatureExtractor, WhisperModel)

from local.bin.export import main as export_main
from local.models.alm import build_alm, save_alm
from local.models.emotion2vec_s import Emotion2VecConfig, Emotion2VecS
from local.models.export import export_model, is_exported, load_exported
from local.models.tokenizer import train_tokenizer
from local.utils.digest import file_digest, path_digest
from local.utils.hydra import CONF_DIR
from local.utils.provenance import code_version, write_json
from test_alm import CORPUS, PROMPT, TINY_LM, TINY_WHISPER, make_batch

RUN = """
import sys, torch
from local.models.export import load_exported
model = load_exported(sys.argv[1]).eval()
batch = torch.load(sys.argv[2])
with torch.no_grad():
    logits = model(batch).logits
_, ids = model.generate(batch["wav"], batch["wav_lens"], batch["prompts"], return_ids=True, max_new_tokens=8)
torch.save({"logits": logits, "ids": ids}, sys.argv[3])
"""


def write_recipe(root: Path) -> Path:
    """A recipe tree as run.sh leaves it, pretrained sources included; returns egs/fake."""
    torch.manual_seed(0)
    WhisperModel(WhisperConfig(**TINY_WHISPER)).save_pretrained(root / "src" / "whisper")
    WhisperFeatureExtractor().save_pretrained(root / "src" / "whisper")
    tok = train_tokenizer(CORPUS, vocab_size=400)
    tok.save_pretrained(root / "src" / "lm")
    Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                 **TINY_LM)).save_pretrained(root / "src" / "lm")
    recipe = root / "egs" / "fake"
    e2v = Emotion2VecS(Emotion2VecConfig.preset("tiny"))
    e2v.reset_parameters()
    e2v.save_pretrained(recipe / "exp" / "e2vs" / "model")
    for name, n in (("train", 5), ("dev", 2)):
        (recipe / "data" / name).mkdir(parents=True)
        (recipe / "data" / name / "wav.scp").write_text("".join(f"u{i} /nowhere/u{i}.wav\n" for i in range(n)))
    (recipe / "exp" / "run_history.sh").write_text("# 2026-01-01T00:00:00 in /x/egs/fake\n"
                                                   "/x/egs/fake/../../run.sh --stage 6 --stop_stage 6 \n")
    return recipe


def trained_model(root: Path, *overrides: str):
    """conf/model/c2ser_tiny.yaml on the recipe's sources, every trainable tensor moved off its init."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR / "model"), version_base=None):
        e2v = [] if "~e2v" in overrides else [f"e2v.path={root / 'egs/fake/exp/e2vs/model'}"]
        cfg = compose("c2ser_tiny", overrides=[*e2v, f"llm.tokenizer={root / 'src/lm'}", *overrides])
    torch.manual_seed(0)
    model = build_alm(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * (0.3 if "lora_B" in name else 0.05))
    if model.feature_norm is not None:
        model.fit_feature_norm([make_batch(), make_batch((9600, 4000))])
    return model.eval()


def save_in_recipe(model, recipe: Path, exp: str = "c2ser") -> Path:
    model_dir = recipe / "exp" / exp / "sft" / "model"
    model.facts = {"labels": ["anger", "happiness"], "transcript_in_prompt": False,
                   "targets": {"c2ser_explicit": {"name": "explicit", "text": PROMPT}}}
    save_alm(model, model_dir)
    write_json(model_dir / "provenance.json", {"stage": "sft", "code": {"commit": "0123456789abcdef", "dirty": True},
                                               "inputs": {"data/train": path_digest(recipe / "data" / "train")}})
    write_json(model_dir.parent / "config.yaml", {"data_root": "data", "train_set": "train", "dev_set": "dev",
                                                  "corpus": {"name": "fake"}})
    return model_dir


def outputs(model, batch) -> dict:
    with torch.no_grad():
        logits = model(batch).logits
    _, ids = model.generate(batch["wav"], batch["wav_lens"], batch["prompts"], return_ids=True, max_new_tokens=8)
    return {"logits": logits, "ids": ids}


def in_fresh_process(out: Path, batch: dict, work: Path) -> dict:
    work.mkdir()
    torch.save(batch, work / "batch.pt")
    subprocess.run([sys.executable, "-c", RUN, str(out), str(work / "batch.pt"), str(work / "out.pt")],
                   cwd=work, check=True, timeout=120)
    return torch.load(work / "out.pt")


def assert_same(got: dict, want: dict) -> None:
    assert got["ids"] == want["ids"]
    torch.testing.assert_close(got["logits"], want["logits"], atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def lora_export(tmp_path_factory):
    """A LoRA model with both encoders and feature normalisation, exported by the CLI, its recipe deleted."""
    tmp = tmp_path_factory.mktemp("lora")
    recipe = write_recipe(tmp / "recipe")
    model = trained_model(tmp / "recipe", "llm.finetune=lora", f"llm.name_or_path={tmp / 'recipe/src/lm'}",
                          f"encoder.name_or_path={tmp / 'recipe/src/whisper'}", "feature_norm=global")
    assert all(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)
    model_dir = save_in_recipe(model, recipe)
    batch = make_batch(prompts=[PROMPT, "Which emotion? Answer briefly."])
    want = outputs(model, batch)
    assert export_main([str(model_dir), str(tmp / "export")]) == 0
    shutil.rmtree(tmp / "recipe")
    return {"out": tmp / "export", "model": model, "batch": batch, "want": want, "tmp": tmp}


def test_lora_export_loads_alone_in_a_fresh_process_and_gives_the_same_outputs(lora_export):
    out = lora_export["out"]
    assert is_exported(out) and not is_exported(out / "lm")
    layout = json.loads((out / "export.json").read_text())["layout"]
    assert {k: v for k, v in layout.items() if v} == {
        "config": "model.yaml", "training": "training.yaml", "tokenizer": "tokenizer/", "lm": "lm/",
        "adapter": "adapter/", "whisper": "whisper/", "e2v": "e2v/", "trained": "model.safetensors"}
    for text in [p.read_text() for p in out.rglob("*") if p.suffix in (".yaml", ".json", ".md")]:
        assert str(lora_export["tmp"] / "recipe") not in text and "${" not in text
    got = in_fresh_process(out, lora_export["batch"], lora_export["tmp"] / "elsewhere")
    assert_same(got, lora_export["want"])


def test_the_adapter_is_peft_s_own_and_gives_the_model_s_lm(lora_export):
    out, lm = lora_export["out"], lora_export["model"].lm
    peft_lm = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(out / "lm"), out / "adapter").eval()
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    with torch.no_grad():
        assert torch.equal(peft_lm(input_ids=ids).logits, lm(input_ids=ids).logits)


def test_a_tampered_weight_file_is_named_and_an_existing_out_dir_refused(lora_export, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(lora_export["out"], copy)
    weights = copy / "e2v" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"e2v/model\.safetensors: sha256"):
        load_exported(copy)
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        export_model(tmp_path / "no_such_model", lora_export["out"])


def test_every_tensor_must_find_its_place(lora_export, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(lora_export["out"], copy)
    rest = load_file(copy / "model.safetensors")
    gone = next(k for k in rest if k.startswith("connectors."))
    save_file({**{k: v for k, v in rest.items() if k != gone}, "stray.weight": torch.zeros(1)},
              copy / "model.safetensors", metadata={"format": "pt"})
    manifest = json.loads((copy / "export.json").read_text())
    manifest["sha256"]["model.safetensors"] = file_digest(copy / "model.safetensors")
    (copy / "export.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=rf"model\.safetensors: weights do not fit the model: missing \['{gone}'\], "
                                         r"unexpected \['stray.weight'\]"):
        load_exported(copy)


def test_the_card_names_the_commit_the_data_and_what_is_missing(lora_export):
    card = (lora_export["out"] / "README.md").read_text()
    commit = code_version()["commit"]
    assert commit and commit in card
    assert "Trained by code 0123456789 (with uncommitted changes)" in card
    assert "LoRA (r=8" in card and "Emotion2Vec-S" in card and "Whisper encoder" in card
    assert "- Corpus: fake" in card and "`train`: 5 utterances (as when the model was trained)" in card
    assert "`dev`: 2 utterances" in card and "--stage 6 --stop_stage 6" in card
    assert "Missing: no egs/fake/exp/c2ser/results.md" in card


@pytest.mark.parametrize("ablation", ["mini", "~encoder", "~e2v", "llm.finetune=frozen"])
def test_full_fine_tuned_models_round_trip(ablation, tmp_path):
    """The mini recipe's model (random-init LM and Whisper, fully fine-tuned LM), its ablations, a frozen LM."""
    recipe = write_recipe(tmp_path / "recipe")
    model = trained_model(tmp_path / "recipe", *([] if ablation == "mini" else [ablation]))
    assert model.config.llm.name_or_path is None  # a random init of a seed: the export must carry the weights
    batch = make_batch()
    want = outputs(model, batch)
    model_dir = save_in_recipe(model, recipe)
    out = export_model(model_dir, tmp_path / "export", card=None)
    shutil.rmtree(tmp_path / "recipe")
    assert not (out / "adapter").exists()
    assert (out / "whisper").exists() == (ablation != "~encoder")
    assert (out / "e2v").exists() == (ablation != "~e2v")
    assert "Missing: exported without recipe information." in (out / "README.md").read_text()
    if ablation == "mini":
        assert_same(in_fresh_process(out, batch, tmp_path / "elsewhere"), want)
    else:
        assert_same(outputs(load_exported(out).eval(), batch), want)
