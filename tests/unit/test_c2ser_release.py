"""The released-C²SER loader against the official computation, re-derived in tests/helpers/c2ser_official.py."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from local.models.c2ser_release import LABELS, OFFICIAL_GENERATION, PROMPTS, load_c2ser_release
from tests.helpers.c2ser_official import build_release, official_audio, official_greedy, official_inputs, qwen2_logits


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("c2ser")
    ckpt, qwen, conf, sd = build_release(root)
    unmerged = load_c2ser_release(ckpt, qwen, conf)
    merged = load_c2ser_release(ckpt, qwen, conf, merge_lora=True)
    return dict(root=root, ckpt=ckpt, qwen=qwen, conf=conf, sd=sd, unmerged=unmerged, merged=merged)


def _inputs(seconds=1.7, extra=53, seed=1):
    g = torch.Generator().manual_seed(seed)
    wav = 0.1 * torch.randn(int(16000 * seconds) + extra, generator=g)
    return wav, torch.randn(10, 24, generator=g)


def _resave(release, name, edit):
    state = torch.load(release["ckpt"], weights_only=True)
    edit(state)
    path = release["root"] / name
    torch.save(state, path)
    return path


def test_every_checkpoint_key_is_consumed(release):
    summary = release["unmerged"].load_summary
    assert summary["loaded"] + len(summary["aliases"]) == summary["checkpoint_keys"] == len(release["sd"])
    assert release["merged"].load_summary["checkpoint_keys"] == len(release["sd"])
    # unused by generate, but loaded
    assert torch.equal(release["unmerged"].speaker_head.weight, release["sd"]["speaker_head.weight"])
    assert torch.equal(release["unmerged"].ln_speech.bias, release["sd"]["ln_speech.bias"])


@pytest.mark.parametrize("seconds,extra", [(1.7, 53), (2.0, 0), (0.5, 161)])
def test_audio_embeddings_equal_official(release, seconds, extra):
    wav, ssl = _inputs(seconds, extra)
    ours = release["unmerged"].release_audio_embeddings(wav, ssl)
    ref = official_audio(release["sd"], wav, ssl)
    assert ours.shape == ref.shape and ours.shape[1] == 10 + -(-((wav.numel() // 160 + 1) // 2) // 4)
    diff = (ours - ref).abs().max().item()
    print(f"audio embeddings {seconds}s+{extra}: max abs diff {diff:.3g}")
    assert diff < 1e-5


def test_greedy_generation_equals_official(release):
    wav, ssl = _inputs()
    model = release["unmerged"]
    ids, logits = model.release_generate(wav, ssl, PROMPTS["implicit"], 12)
    ref_ids, ref_logits = official_greedy(release["sd"], model.tokenizer, wav, ssl, PROMPTS["implicit"], 12, model.eos_id)
    diff = (logits - ref_logits).abs().max().item()
    print(f"first-step logits: max abs diff {diff:.3g}; tokens {ids.tolist()}")
    assert logits.shape == (model.llama_model.config.vocab_size,)
    assert diff < 1e-4
    assert ids.tolist() == ref_ids.tolist()


def test_merged_lora_equals_unmerged(release):
    wav, ssl = _inputs(seed=3)
    a_ids, a_logits = release["unmerged"].release_generate(wav, ssl, PROMPTS["explicit"], 10)
    b_ids, b_logits = release["merged"].release_generate(wav, ssl, PROMPTS["explicit"], 10)
    diff = (a_logits - b_logits).abs().max().item()
    print(f"merged vs unmerged first-step logits: max abs diff {diff:.3g}")
    assert diff < 1e-4 and a_ids.tolist() == b_ids.tolist()
    assert type(release["merged"].llama_model).__name__ == "Qwen2ForCausalLM"


def test_official_generation_settings_run(release):
    wav, ssl = _inputs()
    ids, logits = release["unmerged"].release_generate(wav, ssl, PROMPTS["implicit"], 4, greedy=False)
    assert 1 <= ids.numel() <= 4 and torch.isfinite(logits).all()
    assert OFFICIAL_GENERATION["num_beams"] == 4 and OFFICIAL_GENERATION["eos_token_id"] == 151643
    assert len(LABELS) == 7


def test_unknown_key_fails_naming_it(release):
    path = _resave(release, "extra.pt", lambda s: s.__setitem__("speech_adapter.extra.weight", torch.zeros(2)))
    with pytest.raises(ValueError, match=r"unused: speech_adapter\.extra\.weight"):
        load_c2ser_release(path, release["qwen"], release["conf"])


@pytest.mark.parametrize("key,merge", [
    ("speech_transformer.encoders.1.norm2.bias", False),
    ("llama_model.base_model.model.model.layers.1.mlp.down_proj.lora_B.default.weight", False),
    ("llama_model.base_model.model.model.layers.1.mlp.down_proj.lora_B.default.weight", True),
    ("llama_model.base_model.model.model.layers.0.mlp.up_proj.weight", True),
])
def test_missing_key_fails_naming_it(release, key, merge):
    path = _resave(release, "missing.pt", lambda s: s.pop(key))
    with pytest.raises(ValueError, match="missing: " + key.replace(".", r"\.")):
        load_c2ser_release(path, release["qwen"], release["conf"], merge_lora=merge)


def test_alias_that_differs_fails(release):
    path = _resave(release, "alias.pt", lambda s: s["lm_head.weight"].add_(1))
    with pytest.raises(ValueError, match=r"alias 'lm_head\.weight' differs"):
        load_c2ser_release(path, release["qwen"], release["conf"])


def test_bad_inputs_fail_clearly(release):
    model = release["unmerged"]
    wav, ssl = _inputs()
    with pytest.raises(ValueError, match="positional table holds 1500"):
        model.release_audio_embeddings(torch.zeros(16000 * 31), ssl)
    with pytest.raises(ValueError, match=r"ssl_features must be \[10, D\]"):
        model.release_audio_embeddings(wav, ssl[:9])
    with pytest.raises(ValueError, match=r"D <= 32"):
        model.release_audio_embeddings(wav, torch.zeros(10, 40))
    with pytest.raises(ValueError, match="float 1-D"):
        model.release_audio_embeddings(wav[None], ssl)
    with pytest.raises(ValueError, match="no Emotion2Vec-S attached"):
        model.ssl_features(wav)


def test_ssl_features_respond_and_continuations(release):
    from local.models.emotion2vec_s import Emotion2VecConfig, Emotion2VecS

    torch.manual_seed(0)
    e2v = Emotion2VecS(dataclasses.replace(Emotion2VecConfig.preset("tiny"), embed_dim=32)).eval()
    e2v.reset_parameters()
    model = load_c2ser_release(release["ckpt"], release["qwen"], release["conf"], e2v=e2v)
    wav, _ = _inputs()
    with torch.no_grad():
        feats, lengths = e2v.local_features(wav[None])
        x = e2v.encode(feats, lengths).x[0]
    assert torch.equal(model.ssl_features(wav), x[10:20])
    assert torch.equal(model.ssl_features(wav, ssl_tokens="extra"), x[:10])

    text = model.respond(wav.numpy(), PROMPTS["implicit"], max_new_tokens=6)
    assert isinstance(text, str) and "<|endoftext|>" not in text

    labels = ["anger", "sounds happy", "neutral ."]
    scores = model.continuation_logprobs(wav.numpy().astype(np.float64), PROMPTS["implicit"], labels)
    embeds, w = official_inputs(release["sd"], model.tokenizer, wav, x[10:20], PROMPTS["implicit"])
    ref = []
    for label in labels:
        ids = model.tokenizer(label, add_special_tokens=False).input_ids
        full = torch.cat([embeds, w["model.embed_tokens.weight"][ids][None]], 1)
        logp = qwen2_logits(w, full).log_softmax(-1)[embeds.shape[1] - 1:-1]
        ref.append(logp[torch.arange(len(ids)), ids].sum())
    diff = (scores - torch.stack(ref)).abs().max().item()
    print(f"continuation log-probs: max abs diff {diff:.3g}")
    assert scores.shape == (3,) and diff < 1e-4


def test_bf16_llm_keeps_float32_audio_side(release):
    model = load_c2ser_release(release["ckpt"], release["qwen"], release["conf"], dtype=torch.bfloat16)
    assert model.llm_dtype == torch.bfloat16 and model.speech_llama_proj.weight.dtype == torch.float32
    wav, ssl = _inputs()
    assert torch.equal(model.release_audio_embeddings(wav, ssl), release["unmerged"].release_audio_embeddings(wav, ssl))
    _, logits = model.release_generate(wav, ssl, PROMPTS["implicit"], 2)
    _, ref = release["unmerged"].release_generate(wav, ssl, PROMPTS["implicit"], 2)
    diff = (logits - ref).abs().max().item()
    print(f"bf16 vs float32 LLM first-step logits: max abs diff {diff:.3g}")
    assert diff < 0.5
