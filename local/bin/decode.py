"""Stage 9: decode every test set with every prompt mode (explicit and implicit CoT by default).

    python -m local.bin.decode decode.batch_size=32 decode.sample=true
    python -m local.bin.decode 'test_sets=[/path/to/my/kaldi_dir]'

Writes ``<exp_dir>/decode_<set>_<mode>/hyps.jsonl`` and ``timing.json``; with ``decode.dist=true`` also
``hyp_dist``, the class-name distribution read after each hypothesis (``decode.readout``, stage 6's by default).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from local.eval.decode import decode_test_set, generation_kwargs, resolve_test_set, write_decode_dir
from local.models import alm
from local.models.cache import cached_shards
from local.models.readout import Readout
from local.reasoning.prompts import instruction
from local.utils.hydra import entry_point

log = logging.getLogger("decode")


def default_model_dir(cfg: DictConfig) -> Path:
    """Stage 7's model, or stage 6's for a system without stage 7."""
    stage = cfg.distill if cfg.distill.get("enabled", True) else cfg.sft
    return Path(stage.exp_dir) / "model"


@entry_point
def main(cfg: DictConfig) -> None:
    opts = cfg.decode
    model_dir = Path(opts.model_dir) if opts.model_dir else default_model_dir(cfg)
    device = opts.device if opts.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    unknown = [m for m in opts.modes if m not in opts.prompts]
    if unknown:
        raise ValueError(f"decode.modes {unknown} have no entry in decode.prompts ({', '.join(opts.prompts)})")
    model = alm.load_alm(model_dir, device=device)
    readout_cfg = OmegaConf.to_container(opts.readout, resolve=True) if opts.get("dist") else None
    readout = None if readout_cfg is None else Readout(model.tokenizer, **readout_cfg)
    for entry in cfg.test_sets:
        shard_subdir = opts.shard_subdir
        if shard_subdir is None and (Path(cfg.data_root) / entry).is_dir():  # a set of this recipe: use the cache
            shard_subdir = cached_shards(model, cfg, entry)[0].name
        test_set = resolve_test_set(entry, cfg.data_root, cfg.dump_root, shard_subdir or "shards", opts.source)
        for mode in opts.modes:
            prompt = opts.prompts[mode]
            gen = generation_kwargs(prompt.max_new_tokens, opts.sample, opts.temperature, opts.top_p)
            torch.manual_seed(cfg.seed)
            records, timing = decode_test_set(
                model, test_set, instruction(prompt.instruction), gen, batch_size=opts.batch_size,
                max_seconds=opts.max_seconds,
                features=None if opts.features is None else list(opts.features),
                num_workers=opts.num_workers, transcript_in_prompt=bool(opts.transcript_in_prompt), readout=readout)
            out_dir = Path(opts.exp_dir) / f"decode_{test_set.name}_{mode}"
            write_decode_dir(out_dir, records, {
                **timing, "set": test_set.name, "mode": mode, "data_dir": str(test_set.data_dir),
                "source": "data" if test_set.shard_dir is None else str(test_set.shard_dir),
                "model_dir": str(model_dir), "instruction": prompt.instruction, "gen_kwargs": gen,
                "batch_size": opts.batch_size, "device": device, "readout": readout_cfg})
            log.info("%s: %d utterances, %.3f s/utt, %.1f tokens/utt, %d rejected -> %s", out_dir.name,
                     timing["n"], timing["sec_per_utt"] or 0, timing["tokens_per_utt"] or 0,
                     timing["rejected"], out_dir)


if __name__ == "__main__":
    main()
