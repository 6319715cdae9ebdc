"""The frozen-encoder cache: shards that also hold Whisper / Emotion2Vec-S outputs.

A frozen encoder's output is a pure function of the audio, so stages 6-9 run it
once per utterance (into ``<dump_root>/<set>/feats_<tag>/``, the stage-4 shard
format with ``<name>.npy`` entries) and then train and decode from the stored
frames.  The tag hashes the encoders' configs and the content of the weights
they load (local/utils/digest.py), so a retrained Emotion2Vec-S or another
Whisper checkpoint gets a new cache rather than a stale one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf

from local.data.shards import write_shards
from local.models.alm import AudioLLM, source_digests
from local.utils.digest import value_digest


def feature_tag(model_cfg: DictConfig, names: Sequence[str]) -> str:
    """A name for the cache that changes whenever the cached encoders could: their configs and weights."""
    encoders = {k: OmegaConf.to_container(model_cfg[k], resolve=True)
                for k in ("encoder", "e2v") if model_cfg.get(k)}
    weights = {k: d for k, d in source_digests(model_cfg).items() if not k.startswith("llm.")}
    return f"feats_{value_digest([encoders, weights, sorted(names)])[:10]}"


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
