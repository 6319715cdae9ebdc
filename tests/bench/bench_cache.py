"""Training step time with the frozen encoders run on the fly vs read from the stage-4 feature cache.

Not part of CI.  Run from the repo root:
    . ./path.sh && python tests/bench/bench_cache.py [--batch 16] [--steps 10] [--device cuda] [model.k=v ...]
The model is conf/model/c2ser_tiny (the mini recipe's) unless overrides say otherwise; the
trailing arguments are Hydra overrides of the composed config, e.g. model/llm=tiny
model.encoder.config.d_model=256.  Both arms train the same model on the same batch, so the
ratio is the time the frozen Whisper and Emotion2Vec-S forward passes cost a step.
"""
from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from local.data.loader import collate
from local.models.alm import build_alm
from local.models.tokenizer import train_tokenizer
from local.utils.hydra import compose

SR = 16000
PROMPT = "Please directly infer the speaker's emotion from the speech."
RESPONSE = "The emotion conveyed is sadness."


def synthetic_batch(n: int, seed: int = 0) -> list[dict]:
    """Voiced-like signals of 2-5 s (the encoders' cost does not depend on what is said)."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        t = np.arange(int(SR * rng.uniform(2.0, 5.0))) / SR
        f0 = 120 + 80 * rng.random()
        wav = 0.2 * np.sin(2 * np.pi * f0 * t) * (1 + 0.5 * np.sin(2 * np.pi * 4 * t)) + 0.02 * rng.standard_normal(len(t))
        samples.append({"utt": f"u{i:03d}", "wav": wav.astype(np.float32), "meta": {}, "targets": [], "feats": {}})
    return samples


def sec_per_step(model, batch: dict, steps: int, device: torch.device) -> tuple[float, float]:
    """(mean seconds per optimizer step after one warm-up step, loss of the first step)."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    times, first = [], None
    for i in range(steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = model(batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        first = float(loss.detach()) if first is None else first
        if i:
            times.append(time.perf_counter() - start)
    return float(np.mean(times)), first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16, help="utterances per step")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per arm")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of conf/config.yaml")
    args = parser.parse_args()
    device = torch.device(args.device)

    cfg = compose(["model.e2v.path=null", *args.overrides])
    tokenizer = train_tokenizer([PROMPT, RESPONSE] * 20, vocab_size=300)
    model = build_alm(cfg.model, tokenizer=tokenizer).to(device)
    if not model.feature_fns():
        raise SystemExit("no frozen encoder in this model: nothing to cache")
    samples = synthetic_batch(args.batch)
    for s in samples:  # what stage 4 stores: each frozen encoder's valid frames
        s["feats"] = {name: fn(s["wav"]) for name, fn in model.feature_fns().items()}
    full = collate(samples)
    text = {"prompts": [PROMPT] * args.batch, "responses": [RESPONSE] * args.batch}
    from_audio = {"wav": full["wav"], "wav_lens": full["wav_lens"], **text}
    from_cache = {"feats": full["feats"], "feat_lens": full["feat_lens"], **text}

    start_state = copy.deepcopy(model.state_dict())
    torch.manual_seed(0)
    audio_sec, audio_loss = sec_per_step(model, from_audio, args.steps, device)
    model.load_state_dict(start_state)
    torch.manual_seed(0)
    cache_sec, cache_loss = sec_per_step(model, from_cache, args.steps, device)

    seconds = float(full["wav_lens"].sum()) / SR
    print(f"model: {', '.join(model.feature_names())}; cached: {', '.join(sorted(model.feature_fns()))}; "
          f"batch {args.batch} utts ({seconds:.1f} s of audio), {args.steps} steps, {device}, "
          f"{torch.get_num_threads()} threads")
    print(f"| arm | sec/step | first loss |\n|---|---:|---:|\n| encoders on the fly | {audio_sec:.4f} | {audio_loss:.5f} |"
          f"\n| feature cache | {cache_sec:.4f} | {cache_loss:.5f} |")
    print(f"speed-up of the cache: {audio_sec / cache_sec:.2f}x")


if __name__ == "__main__":
    main()
