"""A tiny random Whisper for speech recognition, saved in transformers' layout with its own byte-level tokenizer
(no hub): what ``format.asr.model`` names in the tests."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizer
from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|zh|>", "<|translate|>", "<|transcribe|>",
            "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]


def build(root: Path, seed: int = 0) -> Path:
    """``root`` holding the model, a 256-byte vocabulary without merges, and the feature extractor."""
    root.mkdir(parents=True, exist_ok=True)
    vocab = {s: i for i, s in enumerate(bytes_to_unicode().values())}
    vocab.update({t: len(vocab) + i for i, t in enumerate(SPECIALS)})
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = WhisperTokenizer(str(root / "vocab.json"), str(root / "merges.txt"), pad_token="<|endoftext|>",
                                 additional_special_tokens=SPECIALS[1:])
    end, start = vocab["<|endoftext|>"], vocab["<|startoftranscript|>"]
    config = WhisperConfig(vocab_size=len(vocab), d_model=32, encoder_layers=1, decoder_layers=1,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                           num_mel_bins=80, max_target_positions=64, decoder_start_token_id=start, eos_token_id=end,
                           pad_token_id=end, bos_token_id=end)
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    with torch.no_grad():  # specials never win (tied output layer): hypotheses of bytes, never empty
        model.model.decoder.embed_tokens.weight[len(vocab) - len(SPECIALS):] = 0
    model.generation_config.begin_suppress_tokens = []  # a real Whisper's generation_config.json says which
    model.save_pretrained(root)
    tokenizer.save_pretrained(root)
    WhisperFeatureExtractor().save_pretrained(root)
    return root
