"""The GPU checks, one command (about 10 minutes on one H100; not part of CI):

    . ./path.sh && python tests/bench/bench_gpu.py --device cuda --out exp/bench_gpu

1. sft_step: one-step bf16 SFT of a real-shaped small audio LLM (Whisper-base encoder shape, the
   Emotion2Vec-S base shape, the C²SER connectors, a Qwen2-0.5B-shaped LM with LoRA), random weights;
2. sft_step_paper: the paper-size C²SER training step (Whisper-medium, Emotion2Vec-S base, Qwen2-7B with
   LoRA r 8; random weights created on the GPU, bf16 autocast, gradient checkpointing): samples/s and peak
   memory, next to AudioLLM-Reasoning's 1.26 samples/s per H100 for its 9B dual-encoder model;
3. decode_*: our batched KV-cached generation against a per-utterance generate loop of the same model on
   the same inputs (greedy; fixed lengths, so both generate the same number of tokens), for the explicit
   (96 tokens) and the implicit (16) prompts: seconds, tokens/s, the ratio, and how many outputs agree.

It writes ``OUT/bench_gpu.json`` and ``OUT/bench_gpu.md``.  ``--device cpu --size tiny`` runs the same code on
the mini recipe's tiny model (tests/unit/test_bench_gpu.py does, in CI); its numbers are no GPU figures.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from local.data.loader import collate
from local.models.alm import build_alm
from local.models.emotion2vec_s import Emotion2VecConfig, Emotion2VecS
from local.models.tokenizer import train_tokenizer
from local.utils.hydra import compose

SR = 16000
PROMPTS = {"explicit": ("Describe the speaking rate, pitch, volume and words, then infer the emotion.", 96),
           "implicit": ("Please directly infer the speaker's emotion from the speech.", 16)}
RESPONSE = "The pitch is high and the volume is loud; the words are tense. The emotion was inferred to be anger."
ANCHOR = 1.26  # audiollm_reasoning.txt §4: samples/s of the 9B dual-encoder model on one H100 (training)

# model overrides of each size (conf/model/*.yaml, random weights: nothing is downloaded)
SIZES = {
    "tiny": (["model=c2ser_tiny"], "tiny"),
    "small": (["model=c2ser", "model.encoder.name_or_path=null", "model.encoder.config.d_model=512",
               "model.encoder.config.encoder_layers=6", "model.encoder.config.encoder_attention_heads=8",
               "model.encoder.config.encoder_ffn_dim=2048", "model.llm.name_or_path=null",
               "model.llm.config.hidden_size=896", "model.llm.config.num_hidden_layers=24",
               "model.llm.config.num_attention_heads=14", "model.llm.config.num_key_value_heads=2",
               "model.llm.config.intermediate_size=4864", "model.llm.config.tie_word_embeddings=true"], "base"),
    "paper": (["model=c2ser", "model.encoder.name_or_path=null", "model.llm.name_or_path=null"], "base"),
}


def waves(n: int, seconds: tuple[float, float], seed: int = 0) -> list[dict]:
    """Voiced-like signals (what the encoders cost does not depend on what is said)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        t = np.arange(int(SR * rng.uniform(*seconds))) / SR
        wav = 0.2 * np.sin(2 * np.pi * (120 + 80 * rng.random()) * t) + 0.02 * rng.standard_normal(len(t))
        out.append({"utt": f"u{i:03d}", "wav": wav.astype(np.float32), "meta": {}, "targets": [], "feats": {}})
    return out


def build(size: str, device: torch.device, vocab: int):
    overrides, e2v_size = SIZES[size]
    cfg = compose(overrides).model
    tok = train_tokenizer([p for p, _ in PROMPTS.values()] * 10 + [RESPONSE] * 10, vocab_size=vocab)
    with torch.device(device):  # random weights made where they run: a 7B model never sits in host memory
        e2v = Emotion2VecS(Emotion2VecConfig.preset(e2v_size))
        model = build_alm(cfg, acoustic=e2v, tokenizer=tok)
    return model.to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sft_step(model, device: torch.device, batch: int, seconds: tuple[float, float], steps: int) -> dict:
    """Seconds per optimizer step (after one warm-up step), samples/s, peak memory, the first loss."""
    model.train()
    samples = collate(waves(batch, seconds))
    inputs = {"wav": samples["wav"].to(device), "wav_lens": samples["wav_lens"].to(device),
              "prompts": [PROMPTS["explicit"][0]] * batch, "responses": [RESPONSE] * batch}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, first = [], None
    for i in range(steps + 1):
        sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = model(inputs).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        first = float(loss.detach()) if first is None else first
        if i:
            times.append(time.perf_counter() - start)
    sec = float(np.mean(times))
    return {"batch": batch, "seconds_per_step": sec, "samples_per_s": batch / sec, "first_loss": first,
            "finite": bool(np.isfinite(first)),
            "peak_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}


def decode(model, device: torch.device, n: int, seconds: tuple[float, float], mode: str) -> dict:
    """Batched generation of n utterances vs one generate call per utterance, same model, same inputs."""
    model.eval()
    prompt, tokens = PROMPTS[mode]
    samples = waves(n, seconds, seed=1)
    gen = {"max_new_tokens": tokens, "min_new_tokens": tokens}

    def run(group: list[dict]) -> list[str]:
        b = collate(group)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            return model.generate(b["wav"].to(device), b["wav_lens"].to(device), [prompt] * len(group), **gen)

    run(samples[:1])  # warm-up
    out, hyps = {}, {}
    for name, groups in (("batched", [samples]), ("per_utterance", [[s] for s in samples])):
        sync(device)
        start = time.perf_counter()
        hyps[name] = [h for g in groups for h in run(g)]
        sync(device)
        sec = time.perf_counter() - start
        out[name] = {"seconds": sec, "tokens_per_s": n * tokens / sec}
    agree = sum(a == b for a, b in zip(hyps["batched"], hyps["per_utterance"]))
    return {"n": n, "new_tokens": tokens, **out, "speedup": out["per_utterance"]["seconds"] / out["batched"]["seconds"],
            "same_output": agree}


def report(result: dict) -> str:
    lines = [f"# GPU checks ({result['device_name']}, torch {result['torch']}, size {result['size']})", ""]
    for key in ("sft_step", "sft_step_paper"):
        r = result.get(key)
        if r:
            peak = f"{r['peak_gb']:.1f} GB" if r["peak_gb"] is not None else "not measured (CPU)"
            lines.append(f"- {key}: batch {r['batch']}, {r['seconds_per_step']:.3f} s/step, "
                         f"**{r['samples_per_s']:.2f} samples/s**, peak {peak}, first loss {r['first_loss']:.3f}")
    if result.get("sft_step_paper"):
        lines.append(f"  (anchor: AudioLLM-Reasoning's 9B dual-encoder model, {ANCHOR} samples/s per H100)")
    for mode in PROMPTS:
        r = result[f"decode_{mode}"]
        lines.append(f"- decode {mode} ({r['n']} utterances x {r['new_tokens']} tokens): batched "
                     f"{r['batched']['tokens_per_s']:.1f} tok/s, per-utterance {r['per_utterance']['tokens_per_s']:.1f}"
                     f" tok/s, **{r['speedup']:.2f}x**; {r['same_output']}/{r['n']} outputs identical")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", choices=("tiny", "small"), default="small",
                        help="the model of the SFT step and decoding checks (tiny: CPU test size)")
    parser.add_argument("--paper", choices=("auto", "yes", "no"), default="auto",
                        help="run the paper-size C²SER step (auto: on CUDA)")
    parser.add_argument("--batch", type=int, default=8, help="utterances per SFT step")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the warm-up")
    parser.add_argument("--decode_n", type=int, default=16, help="utterances decoded per mode")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    result = {"device": str(device), "size": args.size, "torch": torch.__version__, "python": platform.python_version(),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
              or "cpu"}
    seconds = (2.0, 5.0) if args.size == "tiny" else (4.0, 12.0)
    model = build(args.size, device, vocab=300 if args.size == "tiny" else 2000)
    result["sft_step"] = sft_step(model, device, args.batch, seconds, args.steps)
    for mode in PROMPTS:
        result[f"decode_{mode}"] = decode(model, device, args.decode_n, seconds, mode)
    del model
    if args.paper == "yes" or (args.paper == "auto" and device.type == "cuda"):
        paper = build("paper", device, vocab=2000)
        result["sft_step_paper"] = sft_step(paper, device, args.batch, (15.0, 20.0), args.steps)
        result["sft_step_paper"]["anchor_samples_per_s"] = ANCHOR
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_gpu.json").write_text(json.dumps(result, indent=1))
    (args.out / "bench_gpu.md").write_text(report(result))
    print(report(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
