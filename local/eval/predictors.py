"""What ``emoreason-infer`` and the demo can run: every kind of model behind one ``predict(wavs)``.

A user points ``--model`` at a directory and should not have to say what it
is: each kind in :data:`KINDS` recognises its own files, in order, and the
first that does loads it.  Adding a kind is one class and one registry entry.

=================  ===========================================================  ====================
kind               the directory holds                                          gives
=================  ===========================================================  ====================
``exported``       ``export.json`` (``python -m local.bin.export``)             label, dist, text
``recipe``         ``model.yaml`` + ``trained.pt`` (a stage 6/7/8 model dir)    label, dist, text
``c2ser_release``  ``C2SER_llm.pt``, a Qwen2 config + tokenizer dir, and the    label, dist, text
                   Emotion2Vec-S ``checkpoint.pt`` (the files C²SER released)
``emotion2vec``    ``model.pt`` + ``config.yaml`` (an emotion2vec+ release) or  label, dist
                   our ``config.json`` + ``model.safetensors`` with a head
``qwen2_audio``    a Qwen2-Audio(-Instruct) snapshot (zero-shot baseline)        label, dist, text
=================  ===========================================================  ====================

Every prediction is ``{"label", "dist", "text"}`` plus ``label_from``: the
label is the one the text concludes with (stage 10's rule reader,
:func:`local.eval.extract.explain`), and when the text names none, the most
likely class of the distribution; a classifier's label is its argmax.

Where an audio LLM's distribution is read (``dist_at``).  At the place its
text names its label (``"label"``): the text up to that mention is
teacher-forced and every class name scored there (the read-out of
local/models/readout.py with the words before the mention as its prefix),
so the distribution is the model's own hesitation at the word it wrote,
whatever answer phrase its targets taught it ("...inferred to be X").
Only when the text names no label, or the name cannot be cut from the
words before it, the read-out the model was trained with (``"readout"``,
stage 9's ``decode.dist``), which a model trained without the KL term has
never seen answered.

A recipe model trained with per-speaker feature normalisation meets unknown
speakers here: every input gets the training set's global statistics (stage
9's ``decode.speaker_stats=false`` row), since one file says too little
about its speaker.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from omegaconf import OmegaConf

from local.data.labels import EMOTIONS
from local.data.loader import pad_arrays
from local.eval.extract import concluding_mention, explain
from local.models.readout import Readout
from local.utils.hydra import CONF_DIR

log = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 256
# the words before a label's mention that make its read-out prefix ("inferred to be"): enough to place it
SLOT = re.compile(r"(?:\S+\s+){0,2}\S+(\s*)$")


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is visible here")
    return torch.device(device)


def pad(wavs: Sequence[np.ndarray], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch as the loaders make it (:func:`local.data.loader.pad_arrays`), on ``device``."""
    wav, lens = pad_arrays(wavs)
    return wav.to(device), lens.to(device)


def conclude(text: str | None, dist: dict[str, float] | None, labels: Sequence[str]) -> dict:
    """The record of one prediction: the label the text states, else the distribution's mode."""
    label, why = explain(text, labels) if text is not None else (None, None)
    record = {"label": label, "label_from": "text" if label else None, "dist": dist, "text": text}
    if label is None and dist:
        record.update(label=max(dist, key=dist.get), label_from="dist")
        if why:
            record["text_label"] = why
    return record


def decode_modes() -> dict[str, list[str]]:
    """Prompt mode -> the target types it names, over stage 9's default and every system's
    ``decode.prompts`` (conf/stage/decode.yaml, conf/experiment/*.yaml): the configs are the registry."""
    modes: dict[str, list[str]] = {}
    files = [CONF_DIR / "stage" / "decode.yaml", *sorted((CONF_DIR / "experiment").glob("*.yaml"))]
    for path in files:
        cfg = OmegaConf.load(path)
        prompts = OmegaConf.select(cfg, "prompts" if path.parent.name == "stage" else "decode.prompts") or {}
        for mode, target in prompts.items():
            modes.setdefault(str(mode), [])
            if target not in modes[str(mode)]:
                modes[str(mode)].append(str(target))
    return modes


def max_new_tokens(target: str) -> int:
    table = OmegaConf.load(CONF_DIR / "stage" / "decode.yaml").max_new_tokens
    return int(table.get(target, DEFAULT_MAX_NEW_TOKENS))


class Predictor:
    """``predict(wavs)`` -> one record per 16-kHz waveform (see the module doc)."""

    kind = ""
    labels: list[str] = []

    def describe(self) -> str:
        raise NotImplementedError

    def predict(self, wavs: Sequence[np.ndarray]) -> list[dict]:
        raise NotImplementedError


class AudioLLMPredictor(Predictor):
    """A model dir of this repo's recipes (stages 6-8), rebuilt as stage 9 rebuilds it."""

    kind = "recipe"

    def __init__(self, model, source: str, prompt: str | None, device: torch.device,
                 max_tokens: int | None = None):
        self.model, self.source = model.to(device).eval(), source
        facts = model.facts
        if facts.get("transcript_in_prompt"):
            raise ValueError(f"{source} is a text-only cascade: its prompt holds the transcript, which plain "
                             "audio does not have")
        self.labels = list(facts.get("labels") or EMOTIONS)
        self.target = self._target(prompt, facts.get("targets") or {})
        self.instruction = facts["targets"][self.target]["text"]
        self.gen = {"max_new_tokens": max_tokens or max_new_tokens(self.target), "do_sample": False}
        self.readout = Readout(model.tokenizer, **facts["readout"]) if facts.get("readout") else None
        if self.readout is not None:
            self.labels = list(self.readout.labels)
        if model.speaker_norm:
            model.feature_norm.speakers = {}
        self._slots: dict[tuple[str, str], Readout | None] = {}

    def _target(self, prompt: str | None, targets: dict) -> str:
        known = [t for t, v in targets.items() if v.get("text")]
        if not known:
            raise ValueError(f"{self.source}: its training.yaml names no target type with an instruction")
        if prompt is None:  # no choice made: the direct answer when the model has one, else its only target
            named = [t for t in decode_modes().get("implicit", []) if t in known]
            if named or len(known) == 1:
                return (named or known)[0]
            prompt = "implicit"  # the error below names the choices
        if prompt in known:
            return prompt
        named = [t for t in decode_modes().get(prompt, []) if t in known]
        if not named:
            raise ValueError(f"--prompt {prompt}: {self.source} was trained on the target types "
                             f"{', '.join(known)}; give one of them, or a mode that names one of them "
                             f"({', '.join(m for m, ts in decode_modes().items() if set(ts) & set(known))})")
        return named[0]

    def describe(self) -> str:
        return f"{self.kind} model {self.source}, prompt '{self.target}': {self.instruction!r}"

    def slot(self, text: str) -> tuple[Readout, str, str] | None:
        """(read-out, where, the text it reads) at the text's label mention; None when there is none."""
        found = concluding_mention(text, self.labels)
        before = text[:found[0]] if found else ""
        m = SLOT.search(before)
        if m is None or not m.group(1):  # no words before it, or the name glued to them (CJK)
            return None
        prefix, separator = before[m.start():len(before) - len(m.group(1))], m.group(1)
        key = (prefix, separator)
        if key not in self._slots:
            try:
                self._slots[key] = Readout(self.model.tokenizer, prefix, self.labels, separator)
            except ValueError:  # BPE merges the prefix into the name: no clean place to read
                self._slots[key] = None
        return None if self._slots[key] is None else (self._slots[key], "label", before)

    @torch.no_grad()
    def predict(self, wavs: Sequence[np.ndarray]) -> list[dict]:
        wav, lens = pad(wavs, self.model.device)
        prompts = [self.instruction] * len(wavs)
        texts = self.model.generate(wav, lens, prompts, **self.gen)
        groups: dict[int, tuple[Readout, str, list[int], list[str]]] = {}
        for i, text in enumerate(texts):
            readout, where, context = self.slot(text) or (self.readout, "readout", text)
            if readout is not None:
                _, _, rows, contexts = groups.setdefault(id(readout), (readout, where, [], []))
                rows.append(i)
                contexts.append(context)
        dists, where_of = [None] * len(texts), [None] * len(texts)
        for readout, where, rows, contexts in groups.values():
            batch = {"wav": wav[rows], "wav_lens": lens[rows]}
            for i, d in zip(rows, readout.distributions(self.model, batch, [prompts[i] for i in rows], contexts)):
                dists[i], where_of[i] = d, where
        out = [conclude(t, d, self.labels) for t, d in zip(texts, dists)]
        for record, where in zip(out, where_of):
            if where:
                record["dist_at"] = where
        return out

    @classmethod
    def detect(cls, path: Path) -> bool:
        return (path / "model.yaml").is_file() and (path / "trained.pt").is_file()

    @staticmethod
    def run_dir(path: Path) -> Path:
        """Where the stage that wrote ``path`` ran: its model.yaml names the recipe's own parts relative to
        the recipe dir (``e2v.path: exp/e2vs/model``), as ESPnet's stages run from ``egs/<corpus>/``: the
        current dir or the model dir's nearest ancestor under which most of them exist (a hub id such as
        ``Qwen/Qwen2-7B`` exists under none, and counts for none)."""
        cfg = OmegaConf.load(path / "model.yaml")
        relative = [str(v) for key in (cfg.get("sources") or {})
                    if (v := OmegaConf.select(cfg, key, default=None)) and not Path(str(v)).is_absolute()]
        bases = [Path.cwd(), *path.resolve().parents]
        found = [sum((base / r).exists() for r in relative) for base in bases]
        return bases[found.index(max(found))] if relative else Path.cwd()

    @classmethod
    def load(cls, path: Path, device: torch.device, prompt: str) -> "AudioLLMPredictor":
        from local.models.alm import load_alm
        base, here, where = cls.run_dir(path), Path.cwd(), path.resolve()
        os.chdir(base)  # load_alm reads the relative paths as the stage wrote them
        try:
            model = load_alm(where)
        finally:
            os.chdir(here)
        return cls(model, str(path), prompt, device)


class ExportedPredictor(AudioLLMPredictor):
    """A recipe model exported by ``local.bin.export``: self-contained, no recipe needed."""

    kind = "exported"

    @classmethod
    def detect(cls, path: Path) -> bool:
        return (path / "export.json").is_file()

    @classmethod
    def load(cls, path: Path, device: torch.device, prompt: str) -> "ExportedPredictor":
        from local.models.export import load_exported
        return cls(load_exported(path), str(path), prompt, device)


class Emotion2VecPredictor(Predictor):
    """emotion2vec+ as the plain classifier it was released as: its head over the utterance embedding."""

    kind = "emotion2vec"

    def __init__(self, model, source: str, device: torch.device):
        if model.head is None:
            raise ValueError(f"{source}: this emotion2vec has no classification head (an SSL-only release such as "
                             "emotion2vec_base); use an emotion2vec+ model")
        self.model, self.source = model.to(device).eval(), source
        self.labels = list(model.config.labels)

    def describe(self) -> str:
        return f"emotion2vec classifier {self.source} ({len(self.labels)} classes)"

    @torch.no_grad()
    def predict(self, wavs: Sequence[np.ndarray]) -> list[dict]:
        device = next(self.model.parameters()).device
        wav, lens = pad(wavs, device)
        probs = self.model.extract(wav, lens)["probs"].cpu().numpy()
        return [conclude(None, dict(zip(self.labels, map(float, row))), self.labels) for row in probs]

    @classmethod
    def detect(cls, path: Path) -> bool:
        return ((path / "model.pt").is_file() and (path / "config.yaml").is_file()) or \
            ((path / "config.json").is_file() and (path / "model.safetensors").is_file()
             and '"model_type": "emotion2vec' in (path / "config.json").read_text(errors="replace"))

    @classmethod
    def load(cls, path: Path, device: torch.device, prompt: str) -> "Emotion2VecPredictor":
        from local.models.emotion2vec_s import load_emotion2vec
        model, _ = load_emotion2vec(path, strict=True)
        return cls(model, str(path), device)


class C2SERReleasePredictor(Predictor):
    """The C²SER checkpoint as released (local/models/c2ser_release.py), one utterance at a time as its
    official runtime does; the distribution is each label word's log-probability as the answer."""

    kind = "c2ser_release"

    def __init__(self, model, source: str, prompt: str | None, max_tokens: int | None = None):
        from local.models import c2ser_release
        prompt = prompt or "implicit"
        if prompt not in c2ser_release.PROMPTS:
            raise ValueError(f"--prompt {prompt}: the released C²SER knows {', '.join(c2ser_release.PROMPTS)}")
        self.model, self.source, self.prompt_name = model, source, prompt
        self.prompt = c2ser_release.PROMPTS[prompt]
        self.labels = list(c2ser_release.LABELS)
        self.max_tokens = max_tokens or (400 if prompt == "explicit" else 64)

    def describe(self) -> str:
        return f"released C²SER {self.source}, prompt '{self.prompt_name}': {self.prompt!r}"

    @torch.no_grad()
    def predict(self, wavs: Sequence[np.ndarray]) -> list[dict]:
        out = []
        for wav in wavs:
            text = self.model.respond(wav, self.prompt, max_new_tokens=self.max_tokens)
            scores = self.model.continuation_logprobs(wav, self.prompt, self.labels).float()
            dist = dict(zip(self.labels, map(float, scores.softmax(-1).tolist())))
            out.append(conclude(text, dist, self.labels))
        return out

    @staticmethod
    def files(path: Path) -> tuple[Path, Path, Path | None, Path | None]:
        """(C2SER_llm.pt, the LLM config + tokenizer dir, Emotion2Vec-S checkpoint.pt, official config.yaml)."""
        llm = [d for d in sorted(path.iterdir()) if d.is_dir() and (d / "config.json").is_file()]
        if len(llm) != 1:
            raise ValueError(f"{path}: expected one subdirectory with the Qwen2 config.json and tokenizer "
                             f"(e.g. Qwen2-7B/), found {len(llm)}")
        e2v = next(iter(sorted(path.glob("**/checkpoint.pt"))), None)
        config = path / "config.yaml"
        return path / "C2SER_llm.pt", llm[0], e2v, config if config.is_file() else None

    @classmethod
    def detect(cls, path: Path) -> bool:
        return (path / "C2SER_llm.pt").is_file()

    @classmethod
    def load(cls, path: Path, device: torch.device, prompt: str) -> "C2SERReleasePredictor":
        from local.models.c2ser_release import load_c2ser_release
        checkpoint, llm, e2v, config = cls.files(path)
        if e2v is None:
            raise ValueError(f"{path}: the Emotion2Vec-S checkpoint.pt is missing (ASLP-lab/Emotion2Vec-S)")
        return cls(load_c2ser_release(checkpoint, llm, config, e2v=e2v, device=device), str(path), prompt)


class Qwen2AudioPredictor(Predictor):
    """Qwen2-Audio-7B-Instruct zero-shot (a ``qwen2_audio`` snapshot): asked the AudioBench-style emotion
    question; the distribution is each label word's log-probability as the start of its answer."""

    kind = "qwen2_audio"

    def __init__(self, model, labels: Sequence[str] = EMOTIONS, max_tokens: int = 64):
        self.model, self.labels, self.max_tokens = model, list(labels), max_tokens
        self.question = model.question(self.labels)

    def describe(self) -> str:
        return f"{self.model.describe()}, zero-shot: {self.question!r}"

    @torch.no_grad()
    def predict(self, wavs: Sequence[np.ndarray]) -> list[dict]:
        texts = self.model.respond(list(wavs), self.question, max_new_tokens=self.max_tokens)
        # the instruct model starts an answer with a capital: score the labels as it would write them
        scores = self.model.label_logprobs(list(wavs), self.question, [l.capitalize() for l in self.labels])
        dists = [dict(zip(self.labels, map(float, row))) for row in scores.float().softmax(-1).tolist()]
        return [conclude(t, d, self.labels) for t, d in zip(texts, dists)]

    @classmethod
    def detect(cls, path: Path) -> bool:
        config = path / "config.json"
        return config.is_file() and '"model_type": "qwen2_audio"' in config.read_text(errors="replace")

    @classmethod
    def load(cls, path: Path, device: torch.device, prompt: str) -> "Qwen2AudioPredictor":
        from local.models.qwen2_audio import Qwen2AudioZeroShot
        return cls(Qwen2AudioZeroShot.from_pretrained(path, device=device))


KINDS: dict[str, type] = {"exported": ExportedPredictor, "recipe": AudioLLMPredictor,
                          "c2ser_release": C2SERReleasePredictor, "emotion2vec": Emotion2VecPredictor,
                          "qwen2_audio": Qwen2AudioPredictor}


def load_predictor(model: str | Path, device: str = "auto", prompt: str | None = None) -> Predictor:
    """The predictor of whatever ``model`` is (see the module doc).  ``prompt``: a mode (implicit, explicit, a
    system's own) or a target type; None: implicit when the model was trained on it, else its only target type."""
    path = Path(model)
    if not path.is_dir():
        raise ValueError(f"--model {model}: not a directory")
    for name, kind in KINDS.items():
        if kind.detect(path):
            log.info("%s: a %s model", path, name)
            return kind.load(path, pick_device(device), prompt)
    raise ValueError(f"--model {model}: not a model this command knows; it reads " + "; ".join(
        f"{name} ({(kind.__doc__ or '').strip().splitlines()[0]})" for name, kind in KINDS.items()))
