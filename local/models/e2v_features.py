"""Frozen Emotion2Vec-S features of a ``wav.scp``: frame and utterance embeddings, batched by length.

The later stages use Emotion2Vec-S frozen (C²SER trains its LLM on top of it),
so its outputs are computed once: by :func:`write_features` into a directory
the linear probe and the training stages read, or by
:class:`Emotion2VecFeature` as a cached feature inside the stage-4 shards.

Directory layout written by :func:`write_features` (paths relative to it)::

    utterance/<utt>.npy   float32 [D]      mean of the valid frames
    frames/<utt>.npy      float32 [T', D]  50 frames/s, extra tokens removed (when frames=True)
    utterance.scp         "<utt> utterance/<utt>.npy", one line per utterance, C-sorted
    frames.scp            "<utt> frames/<utt>.npy" (when frames=True)
    info.json             model fingerprint, embedding dim, frame rate, counts
    rejected              "<utt> <reason>" of utterances that gave no features

Every .npy and table is written under a temporary name and renamed.  A re-run
with the same model reuses the .npy files already there (a killed run
resumes); with another model the old features are removed first.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from local.data.audio import SAMPLE_RATE, AudioError, audio_info, read_audio
from local.data.kaldi import c_sorted, write_table
from local.models.emotion2vec_s import Emotion2VecS, load_emotion2vec
from local.utils.atomic import write_text_atomic
from local.utils.digest import path_digest

logger = logging.getLogger(__name__)

FRAME_RATE_HZ = 50


def _approx_samples(spec: str) -> int:
    """Length for ordering only; pipes (unknown until read) sort as 0."""
    try:
        sample_rate, _, frames = audio_info(spec)
    except Exception:  # a pipe or an unreadable file: read_audio reports it properly later
        return 0
    return int(frames * SAMPLE_RATE / sample_rate)


def extract_features(model: Emotion2VecS, wav_scp: Mapping[str, str], batch_size: int = 8,
                     device: str | torch.device = "cpu",
                     on_skip: Callable[[str, str], None] | None = None,
                     progress: bool = True) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Yield ``(utt, frames [T', D], utterance [D])`` float32 arrays for every usable utterance.

    Utterances are batched longest first so a batch holds similar lengths (little
    padding); the padded batch gives the same features as one at a time.
    Unreadable or too-short utterances go to ``on_skip(utt, reason)`` (default:
    a warning) and the rest goes on.  The model is moved to ``device`` and put in eval mode.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    on_skip = on_skip or (lambda utt, reason: logger.warning("skipping %s: %s", utt, reason))
    model = model.to(device).eval()
    min_samples = model.config.receptive_field
    order = sorted(wav_scp, key=lambda utt: (-_approx_samples(wav_scp[utt]), utt))
    with tqdm(total=len(order), unit="utt", desc="emotion2vec features", disable=not progress) as bar:
        for start in range(0, len(order), batch_size):
            utts, wavs = [], []
            for utt in order[start:start + batch_size]:
                try:
                    wav = read_audio(wav_scp[utt], utt)
                except AudioError as e:
                    on_skip(utt, str(e))
                    continue
                if len(wav) < min_samples:
                    on_skip(utt, f"{len(wav)} samples, shorter than the encoder's receptive field "
                                 f"({min_samples} samples)")
                    continue
                utts.append(utt)
                wavs.append(torch.from_numpy(wav))
            if utts:
                lengths = torch.tensor([len(w) for w in wavs])
                batch = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
                with torch.inference_mode():
                    out = model.extract(batch.to(device), lengths.to(device))
                frames = out["frames"].float().cpu().numpy()
                utterance = out["utterance"].float().cpu().numpy()
                for i, (utt, n) in enumerate(zip(utts, out["frame_lengths"].tolist())):
                    yield utt, frames[i, :n], utterance[i]
            bar.update(min(batch_size, len(order) - start))


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    os.replace(tmp, path)




def model_fingerprint(model_path: Path | str, size: str | None = None) -> dict:
    """Identifies the weights a feature dir was made with: the content digest of the model file or dir."""
    return {"model": str(Path(model_path).resolve()), "size": size, "digest": path_digest(model_path)}


def write_features(model: Emotion2VecS, wav_scp: Mapping[str, str], out_dir: Path | str,
                   fingerprint: dict, batch_size: int = 8, device: str | torch.device = "cpu",
                   frames: bool = True, progress: bool = True) -> dict:
    """Write the feature directory described in the module docstring; return ``info.json``'s content."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    identity = {**fingerprint, "frames": frames}
    info_path = out_dir / "info.json"
    if info_path.is_file() and json.loads(info_path.read_text(encoding="utf-8")).get("identity") != identity:
        logger.info("%s was made with another model or options; removing its features", out_dir)
        for name in ("frames", "utterance"):
            shutil.rmtree(out_dir / name, ignore_errors=True)
        for name in ("info.json", "frames.scp", "utterance.scp", "rejected"):
            (out_dir / name).unlink(missing_ok=True)
    kinds = ["utterance", "frames"] if frames else ["utterance"]
    for kind in kinds:
        (out_dir / kind).mkdir(exist_ok=True)
    write_text_atomic(info_path, json.dumps({"identity": identity, "complete": False}, indent=2) + "\n")

    rejected: dict[str, str] = {}
    for utt in wav_scp:
        if "/" in utt or utt.startswith("."):
            rejected[utt] = "utterance id cannot be a file name (contains '/' or starts with '.')"
    done = {utt for utt in wav_scp if utt not in rejected
            and all((out_dir / kind / f"{utt}.npy").is_file() for kind in kinds)}
    todo = {utt: spec for utt, spec in wav_scp.items() if utt not in rejected and utt not in done}
    if done:
        logger.info("%s: reusing features of %d utterances, computing %d", out_dir, len(done), len(todo))

    def skip(utt: str, reason: str) -> None:
        logger.warning("skipping %s: %s", utt, reason)
        rejected[utt] = reason.replace("\n", " ")

    dim = None
    for utt, frame_array, utterance in extract_features(model, todo, batch_size, device, skip, progress):
        _save_npy(out_dir / "utterance" / f"{utt}.npy", utterance)
        if frames:
            _save_npy(out_dir / "frames" / f"{utt}.npy", frame_array)
        done.add(utt)
        dim = utterance.shape[0]

    for kind in kinds:
        table = {utt: f"{kind}/{utt}.npy" for utt in done}
        tmp = out_dir / f".{kind}.scp.tmp"
        write_table(tmp, table)
        os.replace(tmp, out_dir / f"{kind}.scp")
    write_text_atomic(out_dir / "rejected", "".join(f"{u} {rejected[u]}\n" for u in c_sorted(rejected)))
    info = {"identity": identity, "complete": True, "num_utts": len(done), "num_rejected": len(rejected),
            "dim": dim if dim is not None else model.config.embed_dim, "frame_rate_hz": FRAME_RATE_HZ}
    write_text_atomic(info_path, json.dumps(info, indent=2) + "\n")
    return info


class Emotion2VecFeature:
    """A stage-4 shard feature (``shards.features``): ``wav -> frames [T', D]`` or ``utterance [D]``.

    Picklable for ``nj > 1``: the model is loaded on first use in each process.
    """

    def __init__(self, model: str, output: str = "frames", device: str = "cpu", size: str | None = None):
        if output not in ("frames", "utterance"):
            raise ValueError(f"output must be 'frames' or 'utterance', not '{output}'")
        self.model_path, self.output, self.device, self.size = model, output, device, size
        self._model: Emotion2VecS | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_model": None}

    def __call__(self, wav: np.ndarray) -> np.ndarray:
        if self._model is None:
            self._model, _ = load_emotion2vec(self.model_path, self.size)
            self._model.to(self.device).eval()
        batch = torch.from_numpy(np.asarray(wav, dtype=np.float32))[None].to(self.device)
        with torch.inference_mode():
            out = self._model.extract(batch)
        return out[self.output][0].float().cpu().numpy()
