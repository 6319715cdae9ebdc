"""Paper-size parameters and peak training memory per GPU, without a GPU (local/models/footprint.py).

Not part of CI (tests/unit/test_footprint.py checks the accounting).  Run from the repo root:
    . ./path.sh && python tests/bench/bench_paper_size.py [--no-checkpointing] [--json out.json]

C²SER (c2ser.txt): conf/model/c2ser.yaml as the real config builds it on the meta device (Whisper-medium,
trained, float32; Emotion2Vec-S base, frozen; connectors; Qwen2-7B-Instruct bf16 with LoRA r 8), 2 GPUs as the
paper, our sft.batch_size 16 (the paper gives none): 8 per GPU; tokens: 1 utterance + 20 s of 50 Hz
Emotion2Vec-S frames (stage 1's max_dur) + 375 Whisper tokens + prompt and the explicit CoT (96).
AudioLLM-Reasoning (audiollm_reasoning.txt, shared/reasoning_system.md): Whisper-large-v3 encoder,
emotion2vec+ large (1024-d Emotion2Vec-S shape), MERaLiON-v1 adapters (s 15 and 150), Gemma-2-9B-IT bf16
with LoRA (r 8 on the attention and MLP projections: the paper gives no rank); batch 48 on 8 H100 = 6 per
GPU; 100 + 10 audio tokens, prompt and a 256-token Summarize/Elaborate target; one row per round of the
task-alternating schedule (the trained encoder in float32, the frozen one in bf16).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import Gemma2Config, Gemma2ForCausalLM, WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from local.models.alm import build_alm
from local.models.connectors import MLPAdapter
from local.models.emotion2vec_s import Emotion2VecConfig, Emotion2VecS
from local.models.footprint import (Footprint, causal_lm_activations, format_table, part, saved_bytes,
                                    stack_activation_bytes)
from local.models.tokenizer import train_tokenizer
from local.utils.hydra import compose

PROMPT_TOKENS = 40  # instruction and chat template, about
SR = 16000


def whisper_activations(encoder: WhisperEncoder, batch: int, frames: int, checkpointing: bool) -> int:
    """A trained Whisper encoder on ``frames`` (1500: 30 s) per utterance: its blocks and its conv front end,
    each measured on one utterance (attention is within an utterance), times the batch."""
    cfg = encoder.config
    layer = copy.deepcopy(encoder.layers[0]).to_empty(device="cpu").float()
    x = torch.zeros(1, frames, cfg.d_model, requires_grad=True)
    one = batch * saved_bytes(lambda: layer(x, None, layer_head_mask=None), exclude=list(layer.parameters()))
    front = copy.deepcopy(nn.Sequential(encoder.conv1, nn.GELU(), encoder.conv2)).to_empty(device="cpu").float()
    mel = torch.zeros(1, cfg.num_mel_bins, 2 * frames, requires_grad=True)
    conv = batch * saved_bytes(lambda: front(mel), exclude=list(front.parameters()))
    return stack_activation_bytes(one, batch * frames * cfg.d_model * 4, len(encoder.layers), checkpointing) + conv


def utterance_activations(module: nn.Module, width: int, frames: int, batch: int) -> int:
    """A trained connector or adapter on one utterance's ``frames`` of ``width``, times the batch."""
    cpu = copy.deepcopy(module).to_empty(device="cpu").float()
    x = torch.zeros(1, frames, width, requires_grad=True)
    return batch * saved_bytes(lambda: cpu(x, torch.tensor([frames])), exclude=list(cpu.parameters()))


def e2v_activations(e2v: Emotion2VecS, batch: int, seconds: float) -> int:
    """A trained Emotion2Vec-S (CNN, context encoder, blocks) on ``seconds`` of audio, times the batch."""
    cpu = copy.deepcopy(e2v).to_empty(device="cpu").float()
    wav = torch.zeros(1, int(seconds * SR))
    return batch * saved_bytes(lambda: cpu.extract(wav, torch.tensor([wav.shape[1]])), exclude=list(cpu.parameters()))


def c2ser(checkpointing: bool) -> Footprint:
    cfg = compose(["model=c2ser", "model.encoder.name_or_path=null", "model.llm.name_or_path=null",
                   f"model.llm.gradient_checkpointing={checkpointing}",
                   f"model.encoder.gradient_checkpointing={checkpointing}"]).model
    tok = train_tokenizer(["The emotion is anger.", "The pitch is high and the volume is loud."], vocab_size=300)
    with torch.device("meta"):
        e2v = Emotion2VecS(Emotion2VecConfig())
        model = build_alm(cfg, acoustic=e2v, tokenizer=tok)
    batch, seconds = 8, 20
    e2v_frames = whisper_frames = seconds * 50  # Whisper padded to the batch's longest (padding: batch)
    sem_tokens = whisper_frames // model.semantic.downsample
    seq = 1 + e2v_frames + sem_tokens + PROMPT_TOKENS + 96
    f = Footprint("C²SER (SFT)", batch, seq, checkpointing)
    f.parts.append(part("Qwen2-7B + LoRA", model.lm, causal_lm_activations(model.lm, batch, seq, checkpointing)))
    f.parts.append(part("Whisper-medium encoder (trained)", model.semantic,
                        whisper_activations(model.semantic.encoder, batch, whisper_frames, checkpointing)))
    f.parts.append(part("Emotion2Vec-S base (frozen)", model.acoustic))
    widths = {"semantic": model.semantic.out_dim, "acoustic": e2v.config.embed_dim}  # what each connector reads
    frames = {"semantic": sem_tokens, "acoustic": e2v_frames}
    for name, conn in model.connectors.items():
        f.parts.append(part(f"connector {name}", conn, utterance_activations(conn, widths[name], frames[name], batch)))
    rest = [m for n, m in model.named_children() if n not in ("lm", "semantic", "acoustic", "connectors")]
    f.parts.append(part("utterance projection, rest", nn.ModuleList(rest)))
    f.notes.append("batch 16 over the paper's 2 GPUs (our sft.batch_size; the paper gives none)")
    return f


GEMMA2_9B = dict(vocab_size=256000, hidden_size=3584, intermediate_size=14336, num_hidden_layers=42,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=256, max_position_embeddings=8192,
                 sliding_window=4096, query_pre_attn_scalar=256, final_logit_softcapping=30.0,
                 attn_logit_softcapping=50.0, hidden_activation="gelu_pytorch_tanh")  # google/gemma-2-9b-it
WHISPER_LARGE_V3 = dict(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120,
                        num_mel_bins=128, max_source_positions=1500)  # openai/whisper-large-v3's encoder


def reasoning(checkpointing: bool) -> list[Footprint]:
    batch, seconds = 6, 30
    seq = 100 + 10 + PROMPT_TOKENS + 256
    rounds = {"speech round": "speech", "emotion round": "emotion", "final epoch": None}
    out = []
    for label, trained in rounds.items():
        with torch.device("meta"):
            lm = Gemma2ForCausalLM(Gemma2Config(**GEMMA2_9B, torch_dtype=torch.bfloat16)).to(torch.bfloat16)
            lm = get_peft_model(lm, LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj",
                                                                                   "o_proj", "gate_proj", "down_proj"]))
            whisper = WhisperEncoder(WhisperConfig(**WHISPER_LARGE_V3))
            e2v = Emotion2VecS(Emotion2VecConfig(embed_dim=1024, num_heads=16))
            speech_adapter = MLPAdapter(1280, 3584, num_tokens=100, in_frames=1500)
            emotion_adapter = MLPAdapter(1024, 3584, num_tokens=10, in_frames=1500)
        for enc, name in ((whisper, "speech"), (e2v, "emotion")):
            enc.requires_grad_(trained == name)
            if trained != name:
                enc.to(torch.bfloat16)
        f = Footprint(f"AudioLLM-Reasoning ({label})", batch, seq, checkpointing)
        f.parts.append(part("Gemma-2-9B-IT + LoRA", lm, causal_lm_activations(lm, batch, seq, checkpointing)))
        f.parts.append(part(f"Whisper-large-v3 encoder ({'trained' if trained == 'speech' else 'frozen'})", whisper,
                            whisper_activations(whisper, batch, 1500, checkpointing) if trained == "speech" else 0))
        f.parts.append(part(f"emotion2vec+ large ({'trained' if trained == 'emotion' else 'frozen'})", e2v,
                            e2v_activations(e2v, batch, seconds) if trained == "emotion" else 0))
        for name, (adapter, width, stack) in {"speech": (speech_adapter, 1280, 15),
                                              "emotion": (emotion_adapter, 1024, 150)}.items():
            trains = trained in (None, name)  # the other adapter is frozen in an alternating round
            adapter.requires_grad_(trains)
            f.parts.append(part(f"{name} adapter (s {stack}{'' if trains else ', frozen'})", adapter,
                                utterance_activations(adapter, width, 1500, batch) if trains else 0))
        out.append(f)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-checkpointing", action="store_true", help="keep every block's activations")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    footprints = [c2ser(not args.no_checkpointing), *reasoning(not args.no_checkpointing)]
    print(format_table(footprints))
    for f in footprints:
        print(f"\n{f.system}: " + "; ".join(f"{p.name} {p.params / 1e6:.1f} M ({p.trainable / 1e6:.1f} M trained, "
                                           f"activations {p.activation_bytes / 2**30:.1f} GB)" for p in f.parts))
    result = {"footprints": [f.as_dict() for f in footprints]}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
