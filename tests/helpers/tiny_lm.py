"""Tiny transformers causal LMs saved to a dir, for tests of the ``hf`` backends (no download)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping


def scripted_lm(path: Path, script: Mapping[str, str], default: str) -> Path:
    """A Llama whose greedy output is a fixed word chain, saved with its tokenizer to ``path``.

    Attention and MLP outputs are zeroed, so the last hidden state is the (one-hot) embedding of
    the current token and the LM head is a lookup table: after token ``a`` comes ``script[a]``,
    after any other token ``default``.  ``{"Rating": ":", ":": "1", "1": "<eos>"}`` with default
    ``"Rating"`` answers every prompt with "Rating : 1".  The model goes through the same
    ``save_pretrained`` / ``from_pretrained`` path as a real checkpoint.
    """
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<pad>", "<unk>", "<eos>"] + sorted({*script, *script.values(), default} - {"<pad>", "<unk>", "<eos>"})
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")
    tokenizer.save_pretrained(path)
    hidden = max(32, len(vocab))
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                         pad_token_id=vocab["<pad>"], eos_token_id=vocab["<eos>"], bos_token_id=None,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.copy_(torch.eye(len(vocab), hidden))
        model.lm_head.weight.zero_()
        for word, i in vocab.items():
            model.lm_head.weight[vocab[script.get(word, default)], i] = 1.0
    model.save_pretrained(path)
    return path
