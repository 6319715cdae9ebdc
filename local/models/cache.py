"""The frozen-encoder cache: shards that also hold Whisper / Emotion2Vec-S outputs.

A frozen encoder's output is a pure function of the audio, so stages 6-9 run it
once per utterance (into ``<dump_root>/<set>/feats_<tag>/``, the stage-4 shard
format with ``<name>.npy`` entries) and then train and decode from the stored
frames.  The tag hashes the encoders' configs (and the trained Emotion2Vec-S
file's time stamp), so a changed encoder gets a new cache rather than a stale one.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf

from local.data.shards import write_shards
from local.models.alm import AudioLLM


def feature_tag(model_cfg: DictConfig, names: Sequence[str]) -> str:
    """A name for the cache that changes whenever the cached encoders could."""
    encoders = {k: OmegaConf.to_container(model_cfg[k], resolve=True)
                for k in ("encoder", "e2v") if model_cfg.get(k)}
    e2v = (encoders.get("e2v") or {}).get("path")
    stamp = Path(e2v, "model.safetensors") if e2v else None
    if stamp is not None and stamp.exists():  # a retrained Emotion2Vec-S is a new cache
        encoders["e2v_mtime"] = stamp.stat().st_mtime_ns
    digest = hashlib.sha256(json.dumps([encoders, sorted(names)], sort_keys=True).encode()).hexdigest()
    return f"feats_{digest[:10]}"


def cached_shards(model: AudioLLM, cfg: DictConfig, split: str) -> tuple[Path, list[str]]:
    """(shard dir, cached feature names) of ``split``; the features are computed once, here.

    A model without frozen encoders reads the plain stage-4 shards.
    """
    fns = model.feature_fns()
    if not fns:
        return Path(cfg.dump_root) / split / "shards", []
    data_dir = Path(cfg.data_root) / split
    out = Path(cfg.dump_root) / split / feature_tag(model.config, list(fns))
    targets = data_dir / "targets.jsonl"
    write_shards(data_dir, out, cfg.shards.max_shard_size, targets_path=targets if targets.exists() else None,
                 features=fns, audio_format=cfg.shards.audio_format, nj=1, shuffle_seed=cfg.seed)
    return out, sorted(fns)
