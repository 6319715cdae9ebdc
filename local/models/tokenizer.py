"""The LLM's tokenizer: the audio placeholder token, and a small trained tokenizer for tiny LMs.

A prompt carries one ``<|audio|>`` token where the audio goes; at embedding
time it is replaced by the audio tokens (their number varies per utterance, so
the text side never has to know it).  Its own embedding row is never read, so
adding it needs no training even when the embeddings are frozen (LoRA).
Markers around the audio (AudioLLM-Reasoning's ``<audio_start>`` ...
``<audio_end>``) are plain text in the prompt template for the same reason:
new special tokens would get untrained embeddings.

The mini recipe's LLM is a tiny random model without a tokenizer of its own;
:func:`train_tokenizer` makes a byte-level BPE one (exact round trip of any
text, Chinese included) with ChatML special tokens and chat template, the
layout of Qwen2-Instruct, so the same prompt code serves both.
"""
from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast

AUDIO_TOKEN = "<|audio|>"

PAD, BOS, EOS = "<|endoftext|>", "<|im_start|>", "<|im_end|>"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1000) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts``, with ChatML specials and the audio placeholder."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, BOS, EOS, AUDIO_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS,
                                   additional_special_tokens=[AUDIO_TOKEN])
    fast.chat_template = CHATML_TEMPLATE
    return fast


def add_audio_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """Make sure the tokenizer has the placeholder (and a pad token); return the placeholder's id."""
    if AUDIO_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [AUDIO_TOKEN]},
                                     replace_additional_special_tokens=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)


def fit_embeddings(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Grow the embedding matrix when the tokenizer outgrew it (Qwen2's has spare rows; a small one may not)."""
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
