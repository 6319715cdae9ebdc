"""Qwen2-Audio zero-shot wrapper on a tiny random Qwen2-Audio saved like a hub snapshot (offline)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("transformers.models.qwen2_audio")
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import (PreTrainedTokenizerFast, Qwen2AudioConfig, Qwen2AudioForConditionalGeneration,  # noqa: E402
                          Qwen2AudioProcessor, WhisperFeatureExtractor)

from local.models.qwen2_audio import LABELS, Qwen2AudioZeroShot, audio_tokens  # noqa: E402

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # A small vocabulary: "anger"/"neutral" become single tokens, "disgust"/"surprise" stay multi-token.
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["anger neutral anger neutral system user assistant helpful"] * 50, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>",
                                   additional_special_tokens=SPECIALS[3:],
                                   model_input_names=["input_ids", "attention_mask"])  # as Qwen2TokenizerFast


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("qwen2_audio_tiny")
    tokenizer = tiny_tokenizer()
    processor = Qwen2AudioProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=tokenizer)
    config = Qwen2AudioConfig(
        audio_config={"model_type": "qwen2_audio_encoder", "d_model": 32, "encoder_layers": 2,
                      "encoder_attention_heads": 2, "encoder_ffn_dim": 64, "num_mel_bins": 128,
                      "max_source_positions": 1500},
        text_config={"model_type": "qwen2", "vocab_size": len(tokenizer), "hidden_size": 32,
                     "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "num_key_value_heads": 2, "max_position_embeddings": 2048},
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"))
    model = Qwen2AudioForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def zs(snapshot):
    return Qwen2AudioZeroShot.from_pretrained(snapshot)


def wav(seconds: float, seed: int) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * 16000))).astype(np.float32)


def test_snapshot_uses_real_default_template(zs):
    assert zs.processor.chat_template == Qwen2AudioProcessor.default_chat_template.fget(None)
    text = zs.prompt("Q?")
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\nQ?<|im_end|>\n<|im_start|>assistant\n")
    assert "(anger, happiness, neutral, sadness, surprise, disgust, fear)?" in zs.question(LABELS)


def test_audio_token_count_matches_formula(zs):
    wavs = [wav(1.3, 0), wav(0.37, 1)]
    batch = zs.inputs(wavs, zs.question())
    frames = batch["feature_attention_mask"].sum(-1).tolist()
    assert frames == [-(-len(w) // 160) for w in wavs]  # one mel frame per 10-ms hop
    counts = (batch["input_ids"] == zs.model.config.audio_token_index).sum(-1).tolist()
    assert counts == [((L - 1) // 2 + 1 - 2) // 2 + 1 for L in frames] == [audio_tokens(L) for L in frames]
    assert batch["attention_mask"][1, 0] == 0  # shorter row is left-padded


def test_respond_batched_equals_single(zs):
    wavs = [wav(1.3, 0), wav(0.37, 1)]
    q = zs.question()
    batched = zs.respond(wavs, q, max_new_tokens=8)
    single = [zs.respond([w], q, max_new_tokens=8)[0] for w in wavs]
    assert batched == single and all(isinstance(t, str) for t in batched)


def direct(zs, w, question, label):
    """Teacher-forced full forward of one unpadded prompt + label, log-softmax gathered."""
    batch = zs.inputs([w], question)
    ids = zs.tokenizer(label, add_special_tokens=False)["input_ids"]
    n = batch["input_ids"].shape[1]
    full = torch.cat([batch["input_ids"], torch.tensor([ids])], 1)
    logits = zs.model(input_ids=full, attention_mask=torch.ones_like(full), input_features=batch["input_features"],
                      feature_attention_mask=batch["feature_attention_mask"]).logits[0]
    logp = logits.float().log_softmax(-1)
    return sum(logp[n - 1 + i, t].item() for i, t in enumerate(ids))


def test_label_logprobs_equal_direct(zs):
    wavs = [wav(1.3, 0), wav(0.37, 1)]
    labels = ["anger", "neutral", "disgust", "Surprise"]
    lens = [len(zs.label_ids(x)) for x in labels]
    assert min(lens) == 1 and max(lens) > 2, lens  # both single- and multi-token labels are covered
    q = zs.question(labels)
    with torch.no_grad():
        scores = zs.label_logprobs(wavs, q, labels)
        expected = torch.tensor([[direct(zs, w, q, x) for x in labels] for w in wavs])
    assert scores.shape == (2, 4)
    torch.testing.assert_close(scores, expected, atol=1e-4, rtol=1e-4)
    # the cache is cropped back after each label: a second call, labels reversed, agrees
    torch.testing.assert_close(zs.label_logprobs(wavs, q, labels[::-1]), scores.flip(-1), atol=1e-4, rtol=1e-4)


def test_refuses_long_and_short_audio(zs):
    with pytest.raises(ValueError, match=r"clip 1 is 31\.00 s long.*at most 30 s"):
        zs.respond([wav(1.0, 0), wav(31.0, 1)], zs.question())
    with pytest.raises(ValueError, match="at least"):
        zs.label_logprobs([np.zeros(100, np.float32)], zs.question())
    assert len(zs.inputs([wav(30.0, 2)], "q")["input_ids"][0]) > 750  # exactly 30 s is fine: 750 audio tokens


def test_the_snapshot_runs_through_emoreason_infer(snapshot, zs, tmp_path):
    from local.data.audio import write_wav
    from local.eval.infer import infer, list_inputs, load
    from local.eval.predictors import load_predictor
    predictor = load_predictor(snapshot, "cpu")
    assert predictor.kind == "qwen2_audio"
    write_wav(tmp_path / "a.wav", wav(1.2, 3))
    (record,) = infer(predictor, list_inputs([str(tmp_path / "a.wav")]))
    audio = load(list_inputs([str(tmp_path / "a.wav")])[0])
    question = zs.question(predictor.labels)
    expected = zs.label_logprobs([audio], question, [l.capitalize() for l in predictor.labels]).softmax(-1)[0]
    assert max(abs(record["dist"][k] - float(p)) for k, p in zip(predictor.labels, expected)) < 1e-5
    assert record["text"] == zs.respond([audio], question)[0] and record["label"] in predictor.labels
