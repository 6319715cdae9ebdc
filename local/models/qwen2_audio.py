"""Qwen2-Audio-7B-Instruct as a zero-shot emotion baseline (transformers >= 4.57 classes).

The model answers a multiple-choice question about one audio clip; ``respond`` gives its free text
and ``label_logprobs`` the log-probability of each label word as the start of its answer, which the
predictor softmaxes into a distribution.  Everything goes through the checkpoint's own processor and
chat template (default system prompt, ``Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\\n`` then the
question, as the model card does), so the prompt is the one the model was tuned on.

Why the checks: the Whisper feature extractor pads every clip to 30 s and *truncates* longer ones
silently, so a 45-s call would be judged on its first 30 s; we refuse instead (``emoreason-infer``
cuts long inputs with its VAD before they get here).  A clip under ~50 ms gets fewer than two audio
tokens, which sends the model down its legacy (unexpanded placeholder) path; refused as well.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from local.data.labels import EMOTIONS

LABELS = tuple(EMOTIONS)
SAMPLE_RATE = 16000
MIN_SAMPLES = 800  # 5 mel frames -> 2 audio tokens (see audio_tokens)


def audio_tokens(frames: int) -> int:
    """Audio tokens for ``frames`` valid mel frames: conv2 (stride 2) then AvgPool(2), as the processor
    expands ``<|AUDIO|>`` (processing_qwen2_audio.py) and the encoder counts its outputs."""
    return ((frames - 1) // 2 + 1 - 2) // 2 + 1


class Qwen2AudioZeroShot:
    """Qwen2AudioForConditionalGeneration + its processor, asked one question per clip, batched."""

    def __init__(self, model, processor, source: str = ""):
        self.model, self.processor, self.source = model.eval(), processor, source
        self.tokenizer = processor.tokenizer
        # Left padding: generation appends after the last real token of every row, and the last
        # position's logits are the first answer token's distribution for label_logprobs too.
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = "<|endoftext|>"
        vocab = self.tokenizer.get_vocab()
        self.stop_ids = [vocab[t] for t in ("<|im_end|>", "<|endoftext|>") if t in vocab]
        fe = processor.feature_extractor
        self.max_samples = int(fe.n_samples)  # chunk_length (30 s) * sampling_rate
        if fe.sampling_rate != SAMPLE_RATE:
            raise ValueError(f"{source}: feature extractor expects {fe.sampling_rate} Hz, this repo feeds 16 kHz")

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None) -> "Qwen2AudioZeroShot":
        """Load a local snapshot (e.g. Qwen/Qwen2-Audio-7B-Instruct); bf16 on GPU, fp32 on CPU by default."""
        from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration
        path, device = Path(path), torch.device(device)
        if not (path / "config.json").is_file():
            raise ValueError(f"{path}: no config.json; expected a Qwen2-Audio snapshot directory")
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        model = Qwen2AudioForConditionalGeneration.from_pretrained(path, dtype=dtype).to(device)
        return cls(model, AutoProcessor.from_pretrained(path), str(path))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @staticmethod
    def question(labels: Sequence[str] = LABELS) -> str:
        """AudioBench's ER question (AudioLLMs/AudioBench src/dataset_src/iemocap_emotion_test.py,
        er_instructions[1]: the label set in parentheses) with our labels, plus an answer-format line
        so that the first word of the answer is the label that ``label_logprobs`` scores."""
        return (f"What emotions do you detect in the speaker's voice ({', '.join(labels)})? "
                "Answer with one word from the list.")

    def prompt(self, question: str) -> str:
        """The chat text of one user turn (audio, then the question) plus the generation prompt."""
        conversation = [{"role": "user", "content": [{"type": "audio", "audio_url": "clip"},
                                                     {"type": "text", "text": question}]}]
        return self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)

    def check(self, wavs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Mono float32 16-kHz clips between MIN_SAMPLES and 30 s, or a ValueError naming the clip."""
        out = []
        for i, w in enumerate(wavs):
            w = np.asarray(w, dtype=np.float32)
            if w.ndim != 1:
                raise ValueError(f"clip {i}: expected a mono 1-D waveform, got shape {w.shape}")
            if len(w) > self.max_samples:
                raise ValueError(f"clip {i} is {len(w) / SAMPLE_RATE:.2f} s long; Qwen2-Audio hears at most "
                                 f"{self.max_samples / SAMPLE_RATE:.0f} s (its feature extractor would silently "
                                 "cut the rest): split it first (emoreason-infer --max_seconds 30)")
            if len(w) < MIN_SAMPLES:
                raise ValueError(f"clip {i} is {len(w) / SAMPLE_RATE:.3f} s long; Qwen2-Audio needs at least "
                                 f"{MIN_SAMPLES / SAMPLE_RATE:.2f} s")
            out.append(w)
        return out

    def inputs(self, wavs: Sequence[np.ndarray], question: str) -> dict:
        """The processor's batch (left-padded ids with the expanded ``<|AUDIO|>`` run, 30-s mel features,
        their frame mask) plus position ids that start at 0 on every row's first real token."""
        wavs = self.check(wavs)
        batch = self.processor(text=[self.prompt(question)] * len(wavs), audio=wavs, sampling_rate=SAMPLE_RATE,
                               return_tensors="pt", padding=True)
        # token_type_ids: a generic fast tokenizer emits them, Qwen2's does not, and generate() rejects them
        batch = {k: v.to(self.device) for k, v in batch.items() if k != "token_type_ids"}
        batch["input_features"] = batch["input_features"].to(self.model.dtype)
        return batch

    @staticmethod
    def positions(mask: torch.Tensor) -> torch.Tensor:
        """Position ids under left padding, as GenerationMixin makes them (pads get 1)."""
        return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)

    @torch.no_grad()
    def respond(self, wavs: Sequence[np.ndarray], question: str, max_new_tokens: int = 64) -> list[str]:
        """Greedy answers, one per clip, decoded without special tokens.  Sampling settings of the
        snapshot's generation_config (the hub one samples) are overridden; a repetition_penalty there is kept."""
        batch = self.inputs(wavs, question)
        out = self.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                  temperature=None, top_p=None, top_k=None,
                                  eos_token_id=self.stop_ids or None, pad_token_id=self.tokenizer.pad_token_id)
        new = out[:, batch["input_ids"].shape[1]:]
        return [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]

    def label_ids(self, label: str) -> list[int]:
        ids = self.tokenizer(label, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"label {label!r} tokenizes to nothing")
        return ids

    @torch.no_grad()
    def label_logprobs(self, wavs: Sequence[np.ndarray], question: str,
                       labels: Sequence[str] = LABELS) -> torch.Tensor:
        """[B, C] float32: sum over each label's tokens of log p(token | prompt, earlier label tokens),
        teacher-forced right after ``<|im_start|>assistant\\n``.  The label is scored as spelled (pass
        ``"Anger"`` to score the capitalised form).  The prompt (with its audio) runs once; each label
        continues from its KV cache, which is cropped back to the prompt after every label."""
        batch = self.inputs(wavs, question)
        mask = batch["attention_mask"]
        out = self.model(**batch, position_ids=self.positions(mask), use_cache=True)
        first = out.logits[:, -1].float().log_softmax(-1)
        cache, length = out.past_key_values, mask.shape[1]
        ends = mask.long().sum(-1, keepdim=True)  # position of the first answer token per row
        scores = torch.zeros(len(mask), len(labels), device=first.device)
        for c, label in enumerate(labels):
            ids = self.label_ids(label)
            scores[:, c] = first[:, ids[0]]
            if len(ids) > 1:
                rest = torch.tensor(ids, device=mask.device).expand(len(mask), -1)
                step = self.model(input_ids=rest[:, :-1], past_key_values=cache, use_cache=True,
                                  attention_mask=torch.cat([mask, torch.ones_like(rest[:, :-1])], 1),
                                  position_ids=ends + torch.arange(len(ids) - 1, device=mask.device))
                logp = step.logits.float().log_softmax(-1)
                scores[:, c] += logp.gather(-1, rest[:, 1:, None]).squeeze(-1).sum(-1)
                cache.crop(length)
        return scores.cpu()

    def describe(self) -> str:
        cfg = self.model.config
        return (f"Qwen2-Audio {self.source} ({cfg.audio_config.encoder_layers}-layer audio encoder, "
                f"{cfg.text_config.num_hidden_layers}-layer LM, {self.model.dtype})")
