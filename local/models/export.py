"""A trained model dir made self-contained: every weight in the export, nothing read from a recipe.

A model dir (:func:`local.models.alm.save_alm`) holds only the trained tensors and names its
pretrained parts by path (``${exp_root}/e2vs/model``, a hub id, a seed): it loads only beside
the recipe that made it.  An export holds all of them, each in the format its own library
reads, so that the parts are useful without this code too::

    export.json        format, version, layout, sha256 of every file (README.md aside)
    README.md          the model card
    model.yaml         the model config, every pretrained path relative to the export
    training.yaml      how it was trained (instructions, read-out, labels), as in the model dir
    tokenizer/         the LM's tokenizer, audio placeholder included
    lm/                the LM (``save_pretrained``): the base LM under LoRA, else the LM as trained
    adapter/           LoRA only: the adapter as PEFT writes it (``PeftModel.from_pretrained(lm, adapter)``)
    whisper/           the Whisper encoder as trained, loadable as ``WhisperModel`` (its decoder has no
                       layers: only the encoder is used), and its feature extractor
    e2v/               Emotion2Vec-S (``Emotion2VecS.save_pretrained``)
    model.safetensors  the rest: connectors, utterance projection, feature normalisation statistics

The model is rebuilt by :func:`local.models.alm.build_alm` from ``model.yaml`` with the
paths made absolute, so an export loads exactly as the model dir does, and every file of
``export.json`` must have its recorded digest and every tensor its place.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn
from omegaconf import OmegaConf
from peft import PeftModel, set_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, PreTrainedModel, WhisperFeatureExtractor
from transformers.utils import logging as hf_logging

from local.models.alm import AudioLLM, build_alm, load_alm, model_config
from local.utils.digest import file_digest
from local.utils.provenance import code_version, flatten, read_json, write_json

FORMAT, VERSION = "emoreason-export", 1
MANIFEST, CARD, REST = "export.json", "README.md", "model.safetensors"
# model.yaml key -> where the export keeps what it names
PATHS = {"llm.name_or_path": "lm", "llm.tokenizer": "tokenizer", "encoder.name_or_path": "whisper", "e2v.path": "e2v"}
COMPONENTS = ("lm.", "semantic.", "acoustic.")  # AudioLLM state kept in their own dirs; the rest goes to REST
ST_META = {"format": "pt"}  # what transformers' loader wants to see in a safetensors header
FILES = {"config": "the model config (local.models.alm.build_alm), paths relative to this dir",
         "training": "how it was trained: instructions, read-out, labels (decoding must ask the same way)",
         "tokenizer": "the LM's tokenizer with the <|audio|> placeholder", "lm": "the LM (transformers)",
         "adapter": "the LoRA adapter (PEFT), on top of lm/", "whisper": "the Whisper encoder (WhisperModel, "
         "decoder without layers) and its feature extractor", "e2v": "Emotion2Vec-S (local.models.emotion2vec_s)",
         "trained": "connectors, utterance projection, feature normalisation statistics"}


def is_exported(path: Path | str) -> bool:
    """Whether ``path`` is an export (rather than a model dir written by save_alm)."""
    manifest = read_json(Path(path) / MANIFEST)
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


def plain_lm(lm: nn.Module) -> tuple[PreTrainedModel, dict[str, torch.Tensor]]:
    """The LM without its LoRA layers, and its state under the names of a plain checkpoint: what the
    adapter was trained on top of, so that ``PeftModel.from_pretrained`` on it gives the model's LM."""
    if not isinstance(lm, PeftModel):
        return lm, lm.state_dict()
    base = lm.get_base_model()
    return base, {k.replace(".base_layer.", "."): v for k, v in base.state_dict().items() if "lora_" not in k}


def _whisper_save(frontend: nn.Module, directory: Path) -> None:
    """The encoder under WhisperModel's names (what WhisperFrontend.build loads), a decoder of no layers
    (never run; a real one would cost 400M parameters of random init per load), the feature extractor."""
    encoder = frontend.encoder
    fe = WhisperFeatureExtractor(feature_size=encoder.config.num_mel_bins, sampling_rate=frontend.sampling_rate,
                                 hop_length=frontend.hop, n_fft=frontend.n_fft,
                                 chunk_length=frontend.n_samples // frontend.sampling_rate)
    if not torch.equal(torch.tensor(fe.mel_filters.T, dtype=torch.float32), frontend.mel_filters.float().cpu()):
        raise ValueError("the Whisper front end's mel filters are not a WhisperFeatureExtractor's: cannot export it")
    config = encoder.config.__class__.from_dict(encoder.config.to_dict())
    config.decoder_layers, config.architectures = 0, ["WhisperModel"]
    directory.mkdir(parents=True)
    config.save_pretrained(directory)
    fe.save_pretrained(directory)
    save_file({f"encoder.{k}": v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()},
              str(directory / REST), metadata=ST_META)


def _card(cfg: Mapping, facts: Mapping, model: AudioLLM, card: Mapping | None, layout: Mapping) -> str:
    def count(module: nn.Module | None) -> tuple[int, int]:
        params = list(module.parameters()) if module is not None else []
        return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)

    llm, mode = cfg["llm"], cfg["llm"].get("finetune", "lora")
    lm_cfg = plain_lm(model.lm)[0].config
    lines = ["# EmoReason audio LLM (export)", "", "## Model", ""]
    if model.semantic is not None:
        ec = model.semantic.encoder.config
        lines.append(f"- Semantic encoder: Whisper encoder, {ec.d_model}-d, {ec.encoder_layers} layers, padding "
                     f"{model.semantic.padding}, x{model.semantic.downsample} frame stacking"
                     f"{', pitch features' if model.semantic.pitch else ''}, "
                     f"{'frozen' if not count(model.semantic)[1] else 'fine-tuned'}")
    else:
        lines.append("- Semantic encoder: none (no Whisper)")
    if model.acoustic is not None:
        ac = model.acoustic.config
        lines.append(f"- Acoustic encoder: Emotion2Vec-S, {ac.embed_dim}-d, {ac.depth} blocks, "
                     f"{'frozen' if not count(model.acoustic)[1] else 'fine-tuned'}; features used: "
                     + ", ".join(n for n in model.feature_names() if n != "whisper"))
    else:
        lines.append("- Acoustic encoder: none (no Emotion2Vec-S)")
    tuning = {"lora": "LoRA (r={r}, alpha={lora_alpha}, dropout={lora_dropout}, targets {target_modules})"
                      .format(**{k: llm["lora"].get(k) for k in ("r", "lora_alpha", "lora_dropout", "target_modules")})
              if mode == "lora" else None, "full": "every weight", "frozen": "none (frozen)"}[mode]
    lines += [f"- LM: {lm_cfg.model_type}, {lm_cfg.hidden_size}-d, {lm_cfg.num_hidden_layers} layers, vocabulary "
              f"{lm_cfg.vocab_size}, {llm.get('dtype', 'float32')}; fine-tuning: {tuning}",
              "- Connectors: " + ", ".join(f"{n} ({type(c).__name__})" for n, c in model.connectors.items())
              + f"; fusion {model.fusion}; utterance token: {'yes' if model.utterance_proj is not None else 'no'}; "
              f"feature normalisation: {model.feature_norm.mode if model.feature_norm is not None else 'none'}",
              "", "| part | parameters | trained |", "|---|---:|---:|"]
    parts = {"Whisper encoder": model.semantic, "Emotion2Vec-S": model.acoustic, "connectors": model.connectors,
             "utterance projection": model.utterance_proj, "LM": model.lm, "total": model}
    lines += [f"| {name} | {count(m)[0]:,} | {count(m)[1]:,} |" for name, m in parts.items() if m is not None]
    lines += ["", "## How it was trained (training.yaml)", ""]
    lines.append(f"- Labels: {', '.join(facts.get('labels') or []) or 'missing: training.yaml names none'}")
    for kind, spec in (facts.get("targets") or {}).items():
        spec = spec if isinstance(spec, Mapping) else {"name": spec}
        lines.append(f"- Target `{kind}`, instruction `{spec.get('instruction')}`: {spec.get('text')!r}")
    if not facts.get("targets"):
        lines.append("- Targets: missing: training.yaml records none")
    lines.append(f"- Transcript in the prompt: {facts.get('transcript_in_prompt', 'not recorded')}")
    readout = facts.get("readout")
    lines.append(f"- Read-out: {json.dumps(readout, ensure_ascii=False) if readout else 'none'}")
    code = code_version()
    lines += ["", "## Code", "", f"- Exported by commit {code.get('commit') or 'missing: not a git checkout'}"
              + (" (tree dirty: uncommitted changes)" if code.get("dirty") else " (clean tree)" if code.get("commit")
                 else "")]
    for title, text in (card or {}).items():
        lines += ["", f"## {title}", "", text if text else "Missing: not recorded."]
    if not card:
        lines += ["", "## Training data, recipe, results", "", "Missing: exported without recipe information."]
    lines += ["", "## Files", ""] + [f"- `{v}`: {FILES[k]}" for k, v in layout.items() if v]
    lines += ["", "## Loading", "", "With the EmoReason code (`local/`) at the commit above:", "", "```python",
              "from local.models.export import load_exported", "model = load_exported('THIS_DIR').eval()",
              "texts = model.generate(wav, wav_lens, [instruction])  # 16 kHz float waveforms [B, T]", "```", ""]
    if mode == "lora":
        lines += ["The LM alone: `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained('lm'), 'adapter')`.",
                  ""]
    return "\n".join(lines)


def export_model(model_dir: Path | str, out_dir: Path | str, card: Mapping[str, str | None] | None = None,
                 force: bool = False) -> Path:
    """Write the export of ``model_dir`` to ``out_dir`` (under a temporary name, then renamed, so a crash
    leaves no export that looks whole); ``card``: model-card sections {title: markdown, None = missing}.
    An existing non-empty ``out_dir`` is replaced only with ``force``."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise FileExistsError(f"{out_dir} exists and is not empty: give another dir, or --force to replace it")
    if out_dir.resolve() in (model_dir.resolve(), *model_dir.resolve().parents):
        raise ValueError(f"{out_dir}: an export cannot replace the model dir {model_dir} or a dir above it")
    model = load_alm(model_dir)
    cfg = model_config(model_dir)
    mode = cfg.llm.get("finetune", "lora")
    if model.acoustic is not None and not hasattr(model.acoustic, "save_pretrained"):
        raise ValueError(f"{model_dir}/model.yaml: e2v builds a {type(model.acoustic).__name__}, which cannot be saved")
    tmp = out_dir.with_name(f".{out_dir.name}.export-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        model.tokenizer.save_pretrained(tmp / PATHS["llm.tokenizer"])
        base, state = plain_lm(model.lm)
        base.save_pretrained(tmp / "lm", state_dict=state)
        layout = {"config": "model.yaml", "training": "training.yaml", "tokenizer": "tokenizer/", "lm": "lm/",
                  "adapter": None, "whisper": None, "e2v": None, "trained": REST}
        if mode == "lora":
            model.lm.save_pretrained(tmp / "adapter", save_embedding_layers=False)
            adapter_cfg = tmp / "adapter" / "adapter_config.json"
            values = json.loads(adapter_cfg.read_text())
            values["base_model_name_or_path"] = None  # the recipe's path; the base is ../lm
            adapter_cfg.write_text(json.dumps(values, indent=2, sort_keys=True))
            (tmp / "adapter" / "README.md").unlink(missing_ok=True)  # PEFT's empty template
            layout["adapter"] = "adapter/"
        cfg.llm.name_or_path, cfg.llm.tokenizer = "lm", "tokenizer"
        cfg.llm.pop("config", None)  # a random init's architecture: the weights now say it
        if model.semantic is not None:
            _whisper_save(model.semantic, tmp / "whisper")
            cfg.encoder.name_or_path, layout["whisper"] = "whisper", "whisper/"
            cfg.encoder.pop("config", None)
        if model.acoustic is not None:
            model.acoustic.save_pretrained(tmp / "e2v")
            cfg.e2v.path, layout["e2v"] = "e2v", "e2v/"
        full = model.state_dict()
        rest = {k: v.detach().cpu().contiguous() for k, v in full.items() if not k.startswith(COMPONENTS)}
        stray = [k for k in full if k.startswith(("semantic.", "acoustic.")) and not
                 k.startswith(("semantic.encoder.", "acoustic."))]
        if stray:
            raise ValueError(f"{model_dir}: state the export has no place for: {stray[:5]}")
        save_file(rest, str(tmp / REST), metadata=ST_META)
        resolved = OmegaConf.to_container(cfg, resolve=True)
        leaks = {k: v for k, v in flatten(resolved).items() if isinstance(v, str) and ("${" in v or Path(v).is_absolute())}
        if leaks:
            raise ValueError(f"{model_dir}/model.yaml: keys that would name files outside the export: {leaks}")
        OmegaConf.save(OmegaConf.create(resolved), tmp / "model.yaml")
        if (model_dir / "training.yaml").is_file():
            shutil.copy2(model_dir / "training.yaml", tmp / "training.yaml")
        else:
            OmegaConf.save(OmegaConf.create(model.facts), tmp / "training.yaml")
        files = {p.relative_to(tmp).as_posix(): file_digest(p) for p in sorted(tmp.rglob("*"))
                 if p.is_file() and p.name not in (MANIFEST, CARD)}
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        write_json(tmp / MANIFEST, {"format": FORMAT, "version": VERSION, "finetune": mode, "layout": layout,
                                    "parameters": {"total": sum(p.numel() for p in model.parameters()),
                                                   "trained": trained},
                                    "code": code_version(), "sha256": files})
        (tmp / CARD).write_text(_card(resolved, model.facts, model, card, layout), encoding="utf-8")
        old = out_dir.with_name(f".{out_dir.name}.export-old")
        shutil.rmtree(old, ignore_errors=True)
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _check_keys(path: Path, found: set[str], expected: set[str], allowed_missing: set[str] = frozenset()) -> None:
    missing, unexpected = sorted(expected - found - allowed_missing), sorted(found - expected)
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not fit the model: missing {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                         f"{' ...' if len(unexpected) > 5 else ''}")


def _keys(files: list[Path]) -> set[str]:
    keys = set()
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            keys.update(st.keys())
    return keys


def verify(out_dir: Path | str) -> dict:
    """export.json, once every file it lists has the sha256 it records."""
    out_dir = Path(out_dir)
    manifest = read_json(out_dir / MANIFEST)
    if not is_exported(out_dir):
        raise ValueError(f"{out_dir / MANIFEST}: missing or not an export's manifest")
    if manifest.get("version") != VERSION:
        raise ValueError(f"{out_dir / MANIFEST}: export format version {manifest.get('version')}, this code reads "
                         f"{VERSION}")
    for rel, digest in manifest["sha256"].items():
        path = out_dir / rel
        if not path.is_file():
            raise ValueError(f"{path}: missing from the export ({MANIFEST} lists it)")
        now = file_digest(path)
        if now != digest:
            raise ValueError(f"{path}: sha256 {now[:12]}... is not the {digest[:12]}... {MANIFEST} records: "
                             "the file was modified or damaged after the export")
    return manifest


def load_exported(out_dir: Path | str, device: str | torch.device = "cpu") -> AudioLLM:
    """Rebuild the model of an export from the export alone (as :func:`load_alm` leaves it: train mode)."""
    out_dir = Path(out_dir).resolve()
    manifest = verify(out_dir)
    cfg = OmegaConf.load(out_dir / "model.yaml")
    for key in PATHS:
        rel = OmegaConf.select(cfg, key, default=None)
        if rel:
            OmegaConf.update(cfg, key, str(out_dir / rel))
    tokenizer = AutoTokenizer.from_pretrained(out_dir / "tokenizer")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the Whisper dir has no decoder weights: said once, here, not warned
    try:
        model = build_alm(cfg, tokenizer=tokenizer)
    finally:
        hf_logging.set_verbosity(verbosity)
    base, state = plain_lm(model.lm)
    present = _keys(sorted((out_dir / "lm").glob("*.safetensors")))
    shared = {k for k, v in state.items()
              if k not in present and any(v.data_ptr() == state[p].data_ptr() for p in present if p in state)}
    _check_keys(out_dir / "lm", present, set(state), shared)  # tied weights are saved once
    if manifest["finetune"] == "lora":
        path = out_dir / "adapter" / "adapter_model.safetensors"
        result = set_peft_model_state_dict(model.lm, load_file(str(path)))
        lora = {n for n, _ in model.lm.named_parameters() if "lora_" in n}
        if result.unexpected_keys or lora & set(result.missing_keys):
            raise ValueError(f"{path}: weights do not fit the model: missing "
                             f"{sorted(lora & set(result.missing_keys))[:5]}, unexpected {result.unexpected_keys[:5]}")
    if model.semantic is not None:
        path = out_dir / "whisper" / REST
        _check_keys(path, _keys([path]), {f"encoder.{k}" for k in model.semantic.encoder.state_dict()})
    rest = load_file(str(out_dir / REST))
    expected = {k for k in model.state_dict() if not k.startswith(COMPONENTS)}
    _check_keys(out_dir / REST, set(rest), expected)
    model.load_state_dict(rest, strict=False)
    model.facts = OmegaConf.to_container(OmegaConf.load(out_dir / "training.yaml"))
    return model.to(device)
