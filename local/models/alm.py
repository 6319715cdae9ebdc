"""The audio LLM: encoders -> connectors -> audio tokens spliced into a causal LM's prompt.

Inputs of the LLM, per utterance (C²SER eq. 1; AudioLLM-Reasoning §3.2)::

    prompt tokens up to <|audio|>  |  audio tokens  |  rest of the prompt  |  target tokens + eos

The audio tokens, with ``fusion="time_concat"`` (both papers' choice), are in
time order: the Emotion2Vec-S utterance token, the acoustic tokens
(Emotion2Vec-S frames through ``connectors["acoustic"]``), then the semantic
tokens (Whisper frames, rate-reduced, through ``connectors["semantic"]``);
acoustic first as in C²SER's code (``audio_order``: AudioLLM-Reasoning puts its
100 speech tokens before its 10 emotion tokens).  Only an utterance's valid tokens are used,
so no padding sits inside a sequence.  With ``fusion="feature_concat"`` the
acoustic frames are brought to the semantic frame rate (frame concatenation)
and length, concatenated channel-wise with the semantic frames, and one
connector (``connectors["fused"]``) maps the result (AudioLLM-Reasoning's
alternative, its Fig. 4).

Two things C²SER's released code does differently, done here as its paper
says: Whisper is used in training, and the utterance-level acoustic feature is
Emotion2Vec-S's pooled utterance embedding (one token through
``utterance_proj``), not its first 10 frames.

Frozen encoders (no parameter requiring grad) stay in eval mode whatever
``train()`` says and run without autograd, so their outputs are a pure
function of the audio: stage 4 can store them (:meth:`AudioLLM.feature_fns`)
and :meth:`AudioLLM.forward` then reads ``batch["feats"][name]`` instead of
running the encoder.  Feature names: ``whisper`` (encoder frames [T, D] before
rate reduction), ``e2v`` (Emotion2Vec-S frames [T, D]), ``e2v_utt`` (its
utterance embedding, stored as [1, D]; [D] is read too).

The loss is the LM's cross-entropy over the target tokens only (labels are
-100 on prompt, audio and padding).  Training batches are right-padded;
generation batches are left-padded, so every sequence's last position is its
own and the LM's KV-cached ``generate`` continues all of them together.
"""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from local.models.feature_norm import FeatureNorm
from local.models.frames import fit_length, stack_frames
from local.models.tokenizer import AUDIO_TOKEN, add_audio_token, fit_embeddings
from local.utils.digest import source_digest

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
FUSIONS = ("time_concat", "feature_concat")
FINETUNE_MODES = ("lora", "full", "frozen")

Features = dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (frames [B, T, D], lengths [B])


@dataclass
class ALMOutput:
    loss: torch.Tensor            # mean cross-entropy over the target tokens of the batch
    logits: torch.Tensor          # [B, L, vocab]
    labels: torch.Tensor          # [B, L]: target token ids, IGNORE_INDEX elsewhere
    attention_mask: torch.Tensor  # [B, L]


def batch_speakers(batch: Mapping) -> list[str] | None:
    """Each row's speaker: ``batch["speakers"]``, else the loaders' ``meta[i]["spk"]``; None when unknown."""
    if batch.get("speakers") is not None:
        return list(batch["speakers"])
    meta = batch.get("meta")
    return [m.get("spk") for m in meta] if meta else None


def is_frozen(module: nn.Module) -> bool:
    return not any(p.requires_grad for p in module.parameters())


class AudioLLM(nn.Module):
    """Whisper (``semantic``) and/or Emotion2Vec-S (``acoustic``, anything with
    ``extract(wav, lengths) -> {"frames", "utterance", "frame_lengths"}``), their
    connectors, and a causal LM (plain or PEFT-wrapped) with its tokenizer."""

    def __init__(self, lm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *,
                 semantic: nn.Module | None = None, acoustic: nn.Module | None = None,
                 connectors: Mapping[str, nn.Module] | None = None, utterance_proj: nn.Module | None = None,
                 fusion: str = "time_concat", acoustic_stack: int = 1, audio_prefix: str = AUDIO_TOKEN,
                 feature_norm: FeatureNorm | None = None, audio_order: Sequence[str] = ("acoustic", "semantic")):
        super().__init__()
        connectors = dict(connectors or {})
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got '{fusion}'")
        if acoustic is None and utterance_proj is not None:
            raise ValueError("an utterance projection needs an acoustic encoder")
        if fusion == "feature_concat":
            if semantic is None or acoustic is None:
                raise ValueError("fusion feature_concat fuses Whisper and Emotion2Vec-S frames: it needs both")
            expected = {"fused"}
        else:
            expected = {"semantic"} if semantic is not None else set()
            if acoustic is not None and "acoustic" in connectors:
                expected.add("acoustic")
            elif acoustic is not None and utterance_proj is None:
                raise ValueError("the acoustic encoder is unused: give it a connector and/or an utterance projection")
        if set(connectors) != expected:
            raise ValueError(f"fusion '{fusion}' with these encoders expects connectors {sorted(expected)}, "
                             f"got {sorted(connectors)}")
        self.lm, self.tokenizer = lm, tokenizer
        self.semantic, self.acoustic = semantic, acoustic
        self.connectors = nn.ModuleDict(connectors)
        self.utterance_proj = utterance_proj
        self.feature_norm = feature_norm
        if sorted(audio_order) != ["acoustic", "semantic"]:
            raise ValueError(f"audio_order must order 'acoustic' and 'semantic', got {list(audio_order)}")
        self.fusion, self.acoustic_stack, self.audio_prefix = fusion, acoustic_stack, audio_prefix
        self.audio_order = tuple(audio_order)
        self.audio_token_id = add_audio_token(tokenizer)
        self._feature_memo = None  # (wav array, {name: output}) of the last cache_feature call
        self.facts: dict = {}      # how it was trained: what decoding and scoring must know (see save_alm)
        self.train()

    # --- modes and the feature cache ---------------------------------------------

    def train(self, mode: bool = True) -> "AudioLLM":
        super().train(mode)
        for encoder in (self.semantic, self.acoustic):
            if encoder is not None and is_frozen(encoder):
                encoder.eval()
        return self

    def feature_names(self) -> list[str]:
        """The encoder outputs this model reads."""
        names = ["whisper"] if self.semantic is not None else []
        if "acoustic" in self.connectors or "fused" in self.connectors:
            names.append("e2v")
        if self.utterance_proj is not None:
            names.append("e2v_utt")
        return names

    def feature_fns(self) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
        """``{name: wav -> array}`` for the frozen encoders' outputs, for stage 4's feature cache."""
        owner = {"whisper": self.semantic, "e2v": self.acoustic, "e2v_utt": self.acoustic}
        return {name: partial(self.cache_feature, name) for name in self.feature_names() if is_frozen(owner[name])}

    @torch.no_grad()
    def cache_feature(self, name: str, wav: np.ndarray) -> np.ndarray:
        """One utterance's encoder output as the shards store it (valid frames only).

        The shard writer asks for each name in turn with the same array; all
        names are computed on the first call and kept for that array, so
        Emotion2Vec-S runs once for its frames and its utterance embedding.
        """
        if self._feature_memo is None or self._feature_memo[0] is not wav:
            x = torch.as_tensor(np.asarray(wav, dtype=np.float32), device=self.device)[None]
            feats = self.encoder_features({"wav": x, "wav_lens": torch.tensor([x.shape[1]])}, normalised=False)
            self._feature_memo = (wav, {n: frames[0, :int(lengths[0])].float().cpu().numpy()
                                        for n, (frames, lengths) in feats.items()})
        return self._feature_memo[1][name]

    @property
    def device(self) -> torch.device:
        return self.lm.get_input_embeddings().weight.device

    # --- audio tokens --------------------------------------------------------------

    def encoder_features(self, batch: Mapping, names: Sequence[str] | None = None, normalised: bool = True
                         ) -> Features:
        """The encoder outputs ``names`` (default: all used) from ``batch["feats"]`` when cached, else computed;
        through :attr:`feature_norm` unless ``normalised`` is false (what the cache stores and the norm fits)."""
        names = self.feature_names() if names is None else names
        cached, cached_lens = batch.get("feats") or {}, batch.get("feat_lens") or {}
        out = {n: (cached[n].to(self.device), cached_lens[n].to(self.device)) for n in names if n in cached}
        if "e2v_utt" in out and out["e2v_utt"][0].dim() == 2:  # stored as [D] rather than [1, D]
            utt = out["e2v_utt"][0]
            out["e2v_utt"] = (utt[:, None], torch.ones(len(utt), dtype=torch.long, device=self.device))
        missing = [n for n in names if n not in out]
        if missing:
            if batch.get("wav") is None:
                raise ValueError(f"batch has neither waveforms nor cached features {missing}")
            wav, lens = batch["wav"].to(self.device), batch["wav_lens"].to(self.device)
            if "whisper" in missing:
                with torch.set_grad_enabled(torch.is_grad_enabled() and not is_frozen(self.semantic)):
                    out["whisper"] = self.semantic.encode(wav, lens)
            if {"e2v", "e2v_utt"} & set(missing):
                with torch.set_grad_enabled(torch.is_grad_enabled() and not is_frozen(self.acoustic)):
                    e2v = self.acoustic.extract(wav, lens)
                out["e2v"] = (e2v["frames"], e2v["frame_lengths"].to(self.device))
                out["e2v_utt"] = (e2v["utterance"][:, None], torch.ones_like(lens))
        if normalised and self.feature_norm is not None:
            speakers = batch_speakers(batch)
            out = {n: (self.feature_norm(n, *out[n], speakers=speakers), out[n][1]) for n in names}
        return {n: out[n] for n in names}

    @torch.no_grad()
    def fit_feature_norm(self, batches: Iterable[Mapping], speakers: bool = False) -> None:
        """Take :attr:`feature_norm`'s global statistics (the training set) or, with ``speakers``, those of each
        speaker from the encoders' outputs on ``batches``."""
        was_training = self.training
        self.eval()
        try:
            if speakers:
                self.feature_norm.fit_speakers((self.encoder_features(b, normalised=False), batch_speakers(b))
                                               for b in batches)
            else:
                self.feature_norm.fit(self.encoder_features(b, normalised=False) for b in batches)
        finally:
            self.train(was_training)

    @property
    def speaker_norm(self) -> bool:
        """Whether the encoder outputs are normalised per speaker (the stages then fit each set's speakers)."""
        return self.feature_norm is not None and self.feature_norm.mode == "speaker"

    def audio_tokens(self, batch: Mapping) -> list[torch.Tensor]:
        """Per utterance (one per ``batch["prompts"]``), its audio token embeddings [N_i, LLM width]."""
        feats = self.encoder_features(batch)
        streams = []
        if "e2v_utt" in feats:
            utt = feats["e2v_utt"][0][:, 0]
            utt = self.utterance_proj(utt.to(self.utterance_proj.weight.dtype))
            streams.append((utt[:, None], torch.ones(len(utt), dtype=torch.long)))
        if self.fusion == "time_concat":
            tokens = {}
            if "e2v" in feats:
                tokens["acoustic"] = self.connect("acoustic", *stack_frames(*feats["e2v"], self.acoustic_stack))
            if "whisper" in feats:
                tokens["semantic"] = self.connect("semantic", *self.semantic.reduce(*feats["whisper"]))
            streams += [tokens[name] for name in self.audio_order if name in tokens]
        else:
            sem, sem_lens = self.semantic.reduce(*feats["whisper"])
            ac, _ = stack_frames(*feats["e2v"], self.acoustic_stack)  # zero past its own length
            fused = torch.cat([sem, fit_length(ac, sem.shape[1]).to(sem.dtype)], dim=-1)
            streams.append(self.connect("fused", fused, sem_lens))
        empty = torch.zeros(0, self.lm.get_input_embeddings().embedding_dim, device=self.device)
        return [torch.cat([empty] + [t[i, :int(n[i])] for t, n in streams]) for i in range(len(batch["prompts"]))]

    def connect(self, name: str, frames: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run a connector on frames cast to its dtype (a bf16 encoder may feed a float32 connector)."""
        connector = self.connectors[name]
        return connector(frames.to(next(connector.parameters()).dtype), lengths)

    # --- text ------------------------------------------------------------------------

    def prompt_ids(self, instruction: str) -> list[int]:
        """The prompt's token ids, through the chat template when the tokenizer has one.

        The audio goes where the instruction has ``<|audio|>``, or else in
        ``audio_prefix`` before it.
        """
        text = instruction if AUDIO_TOKEN in instruction else self.audio_prefix + instruction
        if self.tokenizer.chat_template:
            ids = list(self.tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                          add_generation_prompt=True, tokenize=True))
        else:
            ids = self.tokenizer(text).input_ids
        if ids.count(self.audio_token_id) != 1:
            raise ValueError(f"a prompt must hold {AUDIO_TOKEN} exactly once, this one has "
                             f"{ids.count(self.audio_token_id)}: {text!r}")
        return ids

    def target_ids(self, response: str | Sequence[int]) -> list[int]:
        """A text's tokens and EOS; token ids (a sampled rollout, ending in EOS only if the model stopped)
        as they are, so a loss on a rollout is on exactly the tokens that were sampled."""
        if not isinstance(response, str):
            return list(response)
        return self.tokenizer(response, add_special_tokens=False).input_ids + [self.tokenizer.eos_token_id]

    def assemble(self, prompts: Sequence[str], audio: Sequence[torch.Tensor],
                 responses: Sequence[str | Sequence[int]] | None = None, left_pad: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(inputs_embeds [B, L, H], attention_mask [B, L], labels [B, L]) with the audio spliced in."""
        if len(prompts) != len(audio) or (responses is not None and len(responses) != len(prompts)):
            raise ValueError(f"{len(prompts)} prompts, {len(audio)} audio inputs"
                             + ("" if responses is None else f", {len(responses)} responses"))
        embed = self.lm.get_input_embeddings()
        rows, labels = [], []
        for i, (prompt, tokens) in enumerate(zip(prompts, audio)):
            ids = self.prompt_ids(prompt)
            target = self.target_ids(responses[i]) if responses is not None else []
            k = ids.index(self.audio_token_id)
            before = torch.tensor(ids[:k], dtype=torch.long, device=self.device)
            after = torch.tensor(ids[k + 1:] + target, dtype=torch.long, device=self.device)
            rows.append(torch.cat([embed(before), tokens.to(embed.weight.dtype), embed(after)]))
            labels.append(torch.tensor([IGNORE_INDEX] * (len(ids) - 1 + len(tokens)) + target,
                                       dtype=torch.long, device=self.device))
        length = max(len(r) for r in rows)

        def pad(x: torch.Tensor, value) -> torch.Tensor:
            extra = length - len(x)
            spec = (0, 0) * (x.dim() - 1) + ((extra, 0) if left_pad else (0, extra))
            return F.pad(x, spec, value=value)

        embeds = torch.stack([pad(r, 0.0) for r in rows])
        mask = torch.stack([pad(torch.ones(len(r), dtype=torch.long, device=self.device), 0) for r in rows])
        return embeds, mask, torch.stack([pad(lab, IGNORE_INDEX) for lab in labels])

    # --- training and generation -------------------------------------------------

    def forward(self, batch: Mapping) -> ALMOutput:
        """``batch``: "prompts" and "responses" (lists of str, or of token ids), plus "wav" [B, T] / "wav_lens" [B]
        and/or cached "feats" / "feat_lens" (see :mod:`local.data.loader`)."""
        audio = self.audio_tokens(batch)
        embeds, mask, labels = self.assemble(batch["prompts"], audio, batch["responses"])
        out = self.lm(inputs_embeds=embeds, attention_mask=mask, labels=labels)
        return ALMOutput(out.loss, out.logits, labels, mask)

    @torch.no_grad()
    def generate(self, wav: torch.Tensor | None, wav_lens: torch.Tensor | None, prompts: Sequence[str], *,
                 feats: Mapping | None = None, feat_lens: Mapping | None = None, speakers: Sequence[str] | None = None,
                 return_ids: bool = False, **gen_kwargs) -> list[str] | tuple[list[str], list[list[int]]]:
        """Decode a batch (greedy unless ``gen_kwargs`` say otherwise); the texts, special tokens removed,
        and with ``return_ids`` also each row's generated token ids up to and including its first EOS.

        The mode (train/eval) is the caller's.
        """
        batch = {"wav": wav, "wav_lens": wav_lens, "feats": feats, "feat_lens": feat_lens, "prompts": prompts,
                 "speakers": speakers}
        embeds, mask, _ = self.assemble(prompts, self.audio_tokens(batch), left_pad=True)
        kwargs = {"do_sample": False, "pad_token_id": self.tokenizer.pad_token_id,
                  "eos_token_id": self.lm.generation_config.eos_token_id or self.tokenizer.eos_token_id,
                  **gen_kwargs}
        out = self.lm.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)
        texts = self.tokenizer.batch_decode(out, skip_special_tokens=True)
        if not return_ids:
            return texts
        eos = kwargs["eos_token_id"]
        stops = set(eos) if isinstance(eos, (list, tuple)) else {eos}
        ids = []
        for row in out.tolist():
            end = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
            ids.append(row[:end])
        return texts, ids


# --- builders -------------------------------------------------------------------

def load_llm(cfg: DictConfig, tokenizer: PreTrainedTokenizerBase | None = None
             ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The causal LM of ``cfg`` (conf/model/llm/*.yaml) with its tokenizer, placeholder added, fine-tuning set up.

    ``name_or_path`` loads a checkpoint; null builds a random model of the
    ``config`` architecture (seeded), whose vocabulary defaults to the tokenizer's.
    """
    if tokenizer is None:
        source = cfg.get("tokenizer") or cfg.get("name_or_path")
        if not source:
            raise ValueError("model.llm: set name_or_path (a checkpoint) or tokenizer (a tokenizer dir)")
        tokenizer = AutoTokenizer.from_pretrained(source)
    add_audio_token(tokenizer)
    dtype = getattr(torch, cfg.get("dtype", "float32"))
    if cfg.get("name_or_path"):
        lm = AutoModelForCausalLM.from_pretrained(cfg.name_or_path, dtype=dtype)
    else:
        arch = OmegaConf.to_container(cfg.config, resolve=True)
        ids = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
               "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.get("init_seed", 0))
            lm = AutoModelForCausalLM.from_config(AutoConfig.for_model(**{**ids, **arch}), dtype=dtype)
    fit_embeddings(lm, tokenizer)
    if cfg.get("gradient_checkpointing"):  # keep each block's input only, recompute the rest in backward
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    mode = cfg.get("finetune", "lora")
    if mode not in FINETUNE_MODES:
        raise ValueError(f"model.llm.finetune must be one of {FINETUNE_MODES}, got '{mode}'")
    if mode == "lora":
        lm = get_peft_model(lm, LoraConfig(task_type="CAUSAL_LM", **OmegaConf.to_container(cfg.lora, resolve=True)))
    else:
        lm.requires_grad_(mode == "full")
    return lm, tokenizer


def new_connectors(cfg: DictConfig, fusion: str, semantic: nn.Module | None, acoustic_dim: int | None,
                   width: int) -> tuple[dict[str, nn.Module], int]:
    """The connectors ``fusion`` needs (acoustic_dim None: no Emotion2Vec-S frames), and the number of
    Emotion2Vec-S frames stacked per acoustic token."""
    if fusion == "feature_concat":
        if semantic is None or acoustic_dim is None:
            raise ValueError("fusion feature_concat needs both Whisper and Emotion2Vec-S frames")
        ratio = cfg.acoustic_frame_rate / semantic.frame_rate
        stack = round(ratio)
        if stack < 1 or abs(ratio - stack) > 1e-6:
            raise ValueError(f"feature_concat: acoustic rate {cfg.acoustic_frame_rate} Hz is not an integer "
                             f"multiple of the semantic rate {semantic.frame_rate} Hz")
        return {"fused": instantiate(cfg.connector.fused, in_dim=semantic.out_dim + stack * acoustic_dim,
                                     out_dim=width)}, stack
    connectors, stack = {}, 1
    if semantic is not None:
        connectors["semantic"] = instantiate(cfg.connector.semantic, in_dim=semantic.out_dim, out_dim=width)
    if acoustic_dim is not None:
        stack = cfg.get("acoustic_downsample", 1)
        connectors["acoustic"] = instantiate(cfg.connector.acoustic, in_dim=stack * acoustic_dim, out_dim=width)
    return connectors, stack


def build_alm(cfg: DictConfig, acoustic: nn.Module | None = None,
              tokenizer: PreTrainedTokenizerBase | None = None) -> AudioLLM:
    """An :class:`AudioLLM` from the model section of the config (``cfg.model``, see conf/model/c2ser.yaml).

    ``acoustic`` / ``tokenizer``, when given, replace ``cfg.e2v`` / the LLM's
    own tokenizer (a trained Emotion2Vec-S, a test's stand-in).
    """
    lm, tokenizer = load_llm(cfg.llm, tokenizer)
    width = lm.get_input_embeddings().embedding_dim
    semantic = instantiate(cfg.encoder, _convert_="all") if cfg.get("encoder") else None
    if acoustic is None and cfg.get("e2v"):
        acoustic = instantiate(cfg.e2v, _convert_="all")
    if acoustic is not None and cfg.get("freeze_e2v", True):
        acoustic.requires_grad_(False)
    acoustic_dim = None
    if acoustic is not None:
        acoustic_dim = cfg.get("acoustic_dim") or getattr(getattr(acoustic, "config", None), "embed_dim", None)
        if not acoustic_dim:
            raise ValueError("model.acoustic_dim: set it; the acoustic encoder has no config.embed_dim to read it from")
    use_frames = acoustic is not None and cfg.get("acoustic_frames", True)
    use_utterance = acoustic is not None and cfg.get("acoustic_utterance", True)
    fusion = cfg.get("fusion", "time_concat")
    # The new layers are seeded like the random encoders and LM, so that two runs of a stage (or a
    # run and its baseline) start from the same weights whatever the process did before.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.get("init_seed", 0))
        connectors, stack = new_connectors(cfg, fusion, semantic, acoustic_dim if use_frames else None, width)
        utterance_proj = nn.Linear(acoustic_dim, width) if use_utterance else None
    dims = {"whisper": semantic.dim if semantic is not None else None,
            "e2v": acoustic_dim if use_frames else None, "e2v_utt": acoustic_dim if use_utterance else None}
    dims = {n: d for n, d in dims.items() if d}
    norm = cfg.get("feature_norm")
    feature_norm = FeatureNorm(dims, "global" if norm is True else norm) if norm and dims else None
    model = AudioLLM(lm, tokenizer, semantic=semantic, acoustic=acoustic, connectors=connectors,
                     utterance_proj=utterance_proj, fusion=fusion, acoustic_stack=stack,
                     audio_prefix=cfg.get("audio_prefix", AUDIO_TOKEN), feature_norm=feature_norm,
                     audio_order=tuple(cfg.get("audio_order") or ("acoustic", "semantic")))
    model.config = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))  # what save_alm writes
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("audio LLM: %s, %d trainable of %d parameters", ", ".join(model.feature_names()) or "no audio",
             trainable, sum(p.numel() for p in model.parameters()))
    return model


# --- saving and loading a trained model ------------------------------------------

# The pretrained weights a model dir does not hold but rebuilds from where model.yaml says.
SOURCES = ("e2v.path", "encoder.name_or_path", "llm.name_or_path")


def source_digests(cfg: DictConfig) -> dict[str, str]:
    """{key: digest} of the pretrained weights ``cfg`` (a model section) loads from outside the model dir."""
    out = {}
    for key in SOURCES:
        value = OmegaConf.select(cfg, key, default=None)
        if value:
            out[key] = source_digest(str(value))
    return out


def trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable tensors and the feature normalisation's statistics, whole and on the CPU.  Under FSDP
    the parameters are shards (DTensor): every rank must call this (it gathers them), before rank 0 saves."""
    state = {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().cpu()
             for n, p in model.named_parameters() if p.requires_grad}
    state.update({n: b.cpu() for n, b in model.named_buffers() if n.startswith("feature_norm.")})
    return state


def save_alm(model: AudioLLM, directory: Path | str, state: dict[str, torch.Tensor] | None = None) -> None:
    """Write what a later stage needs to rebuild ``model`` and to use it as it was trained.

    ``model.yaml``     the model config, and under ``sources`` the digests of the pretrained
                       weights it rebuilds from (a frozen Emotion2Vec-S, Whisper, the LM)
    ``training.yaml``  :attr:`AudioLLM.facts`: how it was trained, read by every later stage
                       (ESPnet's rule: inference reads the training config from the exp dir):
                       ``targets`` (target type -> the instruction it was trained with, name and
                       text), ``transcript_in_prompt``, ``readout`` (answer prefix, separator and
                       labels of the class-name distribution), ``labels`` (its label set)
    ``tokenizer/``     the tokenizer, audio placeholder included
    ``trained.pt``     only trainable tensors (LoRA, connectors, a fully fine-tuned tiny LM) and the
                       feature normalisation's statistics: frozen parts come back from their sources,
                       so a 7B model costs megabytes, not 15 GB

    The dir is written under a temporary name and renamed.  ``state``: :func:`trained_state`, gathered
    beforehand (FSDP); by default taken from ``model``.
    """
    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cfg = model.config.copy()
    cfg.llm.tokenizer = "tokenizer"  # relative to the model dir
    cfg.sources = source_digests(model.config)
    OmegaConf.save(cfg, tmp / "model.yaml")
    OmegaConf.save(OmegaConf.create(model.facts), tmp / "training.yaml")
    model.tokenizer.save_pretrained(tmp / "tokenizer")
    torch.save(trained_state(model) if state is None else state, tmp / "trained.pt")
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)


def model_config(directory: Path | str) -> DictConfig:
    """The model config a model dir was trained with (its ``sources`` digests left out)."""
    cfg = OmegaConf.load(Path(directory) / "model.yaml")
    cfg.pop("sources", None)
    return cfg


def load_alm(directory: Path | str, device: str | torch.device = "cpu",
             acoustic: nn.Module | None = None) -> AudioLLM:
    """Rebuild a model written by :func:`save_alm`; every trained tensor must find its place, and every
    pretrained source must be the one it was trained with (a retrained Emotion2Vec-S is another encoder)."""
    directory = Path(directory)
    cfg = OmegaConf.load(directory / "model.yaml")
    recorded = OmegaConf.to_container(cfg.pop("sources", None) or OmegaConf.create({}))
    for key, digest in recorded.items():
        if key == "e2v.path" and acoustic is not None:
            continue  # the caller brings the encoder
        value = OmegaConf.select(cfg, key, default=None)
        now = source_digest(str(value)) if value else None
        if now != digest:
            raise ValueError(f"{directory} was trained with model.{key}={value} of digest {digest[:12]}, and "
                             f"{value} is now {'missing' if now is None or now.startswith('name:') else now[:12]}: "
                             "a model never runs with another encoder or LM than it was trained with. Retrain it "
                             "(run.sh re-runs the stages whose inputs changed), or restore the weights it was "
                             "trained with")
    tokenizer = AutoTokenizer.from_pretrained(directory / "tokenizer")
    model = build_alm(cfg, acoustic=acoustic, tokenizer=tokenizer)
    state = torch.load(directory / "trained.pt", map_location="cpu", weights_only=True)
    result = model.load_state_dict(state, strict=False)
    needed = {n for n, p in model.named_parameters() if p.requires_grad}
    needed |= {n for n, _ in model.named_buffers() if n.startswith("feature_norm.")}
    if result.unexpected_keys or needed - set(state):
        raise ValueError(f"{directory}: weights do not fit the model: unexpected {result.unexpected_keys[:5]}, "
                         f"missing {sorted(needed - set(state))[:5]}")
    facts = directory / "training.yaml"
    model.facts = OmegaConf.to_container(OmegaConf.load(facts)) if facts.is_file() else {}
    return model.to(device)
