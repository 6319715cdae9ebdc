"""Transcripts for a corpus that ships none (EmoBox's data, a folder of wavs): stage 1 runs an ASR model.

Stage 2's speaking rate is phones per second of the transcript, and every reasoning target of stage 3 reads
or quotes it, so a corpus without a ``text`` table stops at stage 2.  With ``format.asr.model`` (a Whisper
dir in transformers' layout: Whisper-large-v3 for real corpora) stage 1 writes ``text`` from the model's
hypotheses instead, through transformers' ASR pipeline (chunked beyond 30 s).  They are a machine's
transcripts: stage 1 logs which model made them, and its record holds the model's digest.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from local.data.audio import SAMPLE_RATE

log = logging.getLogger(__name__)

CHUNK_SECONDS = 30  # Whisper's window: longer audio is cut into chunks and stitched by the pipeline


def transcribe(waves: Sequence[np.ndarray], model: str, device: str = "cpu", batch_size: int = 8,
               language: str | None = None, max_new_tokens: int = 128) -> list[str]:
    """One transcript per 16 kHz mono wave, stripped."""
    from transformers import pipeline

    asr = pipeline("automatic-speech-recognition", model=model, device=device)
    generate = {"max_new_tokens": max_new_tokens, **({"language": language, "task": "transcribe"} if language else {})}
    long = any(len(w) > CHUNK_SECONDS * SAMPLE_RATE for w in waves)
    outputs = asr([{"raw": np.asarray(w, dtype=np.float32), "sampling_rate": SAMPLE_RATE} for w in waves],
                  batch_size=batch_size, generate_kwargs=generate, **({"chunk_length_s": CHUNK_SECONDS} if long else {}))
    return [o["text"].strip() for o in outputs]
