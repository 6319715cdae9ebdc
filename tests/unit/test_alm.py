"""The audio LLM: Whisper front end, connectors, assembly, loss masking, generation, feature cache.

Every model here is tiny and random, saved with save_pretrained and loaded back
(the real-size ones are only instantiated on the meta device); nothing is downloaded.
"""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from transformers import Qwen2Config, Qwen2ForCausalLM, WhisperConfig, WhisperFeatureExtractor, WhisperModel

from local.data.loader import collate
from local.data.pitch import PITCH_FEATURES, pitch_features
from local.models.alm import IGNORE_INDEX, build_alm, load_alm, save_alm
from local.models.connectors import MLPAdapter, TransformerConnector
from local.models.emotion2vec_s import Emotion2VecConfig, Emotion2VecS
from local.models import feature_norm as feature_norm_module
from local.models.feature_norm import MIN_SPEAKER_UTTS, FeatureNorm
from local.models.frames import stack_frames
from local.models.tokenizer import AUDIO_TOKEN, train_tokenizer
from local.models.whisper import WhisperFrontend
from local.utils.hydra import CONF_DIR

SR = 16000
PROMPT = "What emotion does the speaker express?"
RESPONSES = ["The speaker sounds happy and fast.", "A slow low voice: the emotion is sadness."]
CORPUS = [PROMPT, *RESPONSES, "The pitch is high and the volume is loud, so the emotion is anger.",
          "Describe the speaking rate, pitch and volume, then infer the emotion."] * 3
TINY_WHISPER = dict(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                    decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64, num_mel_bins=80,
                    max_source_positions=1500, max_target_positions=64)
TINY_LM = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=128, max_position_embeddings=512, tie_word_embeddings=True,
               initializer_range=0.2)  # wide enough that greedy decoding does not repeat one token
LORA_TARGETS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj"}


class StandInE2V(nn.Module):
    """The Emotion2Vec-S ``extract`` interface: 50 Hz frames of a linear map of 320-sample windows,
    utterance = mean of the valid frames."""

    def __init__(self, dim: int = 16):
        super().__init__()
        self.config = SimpleNamespace(embed_dim=dim)
        self.proj = nn.Linear(320, dim)

    def extract(self, wav, lengths):
        n = wav.shape[1] // 320
        frames = torch.tanh(self.proj(wav[:, :n * 320].reshape(len(wav), n, 320)))
        frame_lengths = lengths // 320
        frames = frames * (torch.arange(n)[None, :] < frame_lengths[:, None]).unsqueeze(-1)
        return {"frames": frames, "frame_lengths": frame_lengths,
                "utterance": frames.sum(1) / frame_lengths[:, None]}


def waves(lengths, seed=0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for i, n in enumerate(lengths):
        t = np.arange(n) / SR
        out.append((0.3 * np.sin(2 * np.pi * (150 + 60 * i) * t) + 0.05 * rng.standard_normal(n)).astype(np.float32))
    return out


def pad(ws: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    lens = torch.tensor([len(w) for w in ws])
    out = torch.zeros(len(ws), int(lens.max()))
    for i, w in enumerate(ws):
        out[i, :len(w)] = torch.from_numpy(w)
    return out, lens


def make_batch(lengths=(8000, 12800), responses=RESPONSES, prompts=None) -> dict:
    wav, lens = pad(waves(lengths))
    return {"wav": wav, "wav_lens": lens, "prompts": list(prompts or [PROMPT] * len(lengths)),
            "responses": list(responses[:len(lengths)])}


def compose_model(preset: str, overrides: list[str]):
    """conf/model/<preset>.yaml composed as cfg.model would be, the trained e2v replaced by the test's."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR / "model"), version_base=None):
        return compose(preset, overrides=["~e2v", *overrides])


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    WhisperModel(WhisperConfig(**TINY_WHISPER)).save_pretrained(root / "whisper")
    WhisperFeatureExtractor().save_pretrained(root / "whisper")
    tok = train_tokenizer(CORPUS, vocab_size=400)
    tok.save_pretrained(root / "lm")
    Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                 **TINY_LM)).save_pretrained(root / "lm")
    return {"whisper": root / "whisper", "lm": root / "lm"}


def build_tiny(tiny_dirs, *overrides: str, acoustic: nn.Module | None = None):
    cfg = compose_model("c2ser_tiny", [f"encoder.name_or_path={tiny_dirs['whisper']}",
                                       f"llm.name_or_path={tiny_dirs['lm']}", *overrides])
    torch.manual_seed(0)
    return build_alm(cfg, acoustic=acoustic or StandInE2V(16))


# --- Whisper front end -------------------------------------------------------------

@pytest.mark.parametrize("padding", ["30s", "batch"])
def test_log_mel_matches_whisper_feature_extractor(padding):
    fe = WhisperFeatureExtractor()
    frontend = WhisperFrontend.build(config=TINY_WHISPER, padding=padding)
    ws = waves([8000, 12345, 4000])
    ref = torch.from_numpy(fe(ws, sampling_rate=SR, return_tensors="np").input_features)
    mel, mel_lens = frontend.log_mel(*pad(ws))
    if padding == "30s":
        assert mel.shape == ref.shape == (3, 80, 3000)
    else:  # only as many frames as the longest utterance needs (+ the STFT window), still even
        frames = math.ceil((12345 + 400) / 160)
        assert mel.shape[2] == frames + frames % 2
    torch.testing.assert_close(mel, ref[:, :, :mel.shape[2]], atol=1e-5, rtol=1e-5)
    assert mel_lens.tolist() == [50, 78, 25]  # ceil(n / 160), the feature extractor's attention mask


def test_whisper_30s_mode_is_the_hf_encoder(tiny_dirs):
    frontend = WhisperFrontend.build(str(tiny_dirs["whisper"]), padding="30s", downsample=1).eval()
    encoder = WhisperModel.from_pretrained(tiny_dirs["whisper"]).encoder.eval()
    ws = waves([8000, 12800])
    ref = encoder(torch.from_numpy(WhisperFeatureExtractor()(ws, sampling_rate=SR, return_tensors="np")
                                   .input_features)).last_hidden_state
    frames, lens = frontend.encode(*pad(ws))
    assert frames.shape == (2, 1500, 32) and lens.tolist() == [1500, 1500]
    torch.testing.assert_close(frames, ref, atol=1e-4, rtol=1e-4)
    assert not any(p.requires_grad for p in frontend.parameters())  # freeze defaults to true


def test_whisper_batch_mode_is_batch_invariant_and_downsamples(tiny_dirs):
    frontend = WhisperFrontend.build(str(tiny_dirs["whisper"]), padding="batch", downsample=4).eval()
    ws = waves([8000, 20000])
    frames, lens = frontend.encode(*pad(ws))
    assert lens.tolist() == [25, 63]  # ceil(ceil(n / 160) / 2): 50 Hz
    alone, alone_lens = frontend.encode(*pad(ws[:1]))
    assert alone_lens.tolist() == [25]
    torch.testing.assert_close(frames[0, :25], alone[0, :25], atol=1e-5, rtol=1e-5)
    assert frames[0, 25:].abs().max() == 0
    reduced, reduced_lens = frontend(*pad(ws))
    assert reduced.shape[2] == 4 * 32 and reduced_lens.tolist() == [7, 16] and frontend.frame_rate == 12.5
    torch.testing.assert_close(reduced[1, 2], frames[1, 8:12].reshape(-1))


def test_whisper_with_pitch_appends_the_pitch_features_of_each_frame(tiny_dirs):
    plain = WhisperFrontend.build(str(tiny_dirs["whisper"]), padding="batch").eval()
    frontend = WhisperFrontend.build(str(tiny_dirs["whisper"]), padding="batch", pitch=True).eval()
    assert frontend.dim == 32 + len(PITCH_FEATURES) and frontend.out_dim == 4 * frontend.dim
    wav, lens = pad(waves([8000, 20000]))
    frames, frame_lens = frontend.encode(wav, lens)
    reference, _ = plain.encode(wav, lens)
    torch.testing.assert_close(frames[..., :32], reference)
    pitch = pitch_features(wav, lens, SR, 320, frames.shape[1])  # 20 ms: one per encoder frame
    torch.testing.assert_close(frames[..., 32:], pitch * (torch.arange(frames.shape[1])[None, :, None] < frame_lens[:, None, None]))
    assert frames[0, :25, 32].exp().mean() == pytest.approx(150, rel=0.05)  # waves(): a 150 Hz tone, then 210 Hz
    assert frames[1, :60, 32].exp().mean() == pytest.approx(210, rel=0.05)
    alone, _ = frontend.encode(*pad(waves([8000])))
    torch.testing.assert_close(frames[0, :25], alone[0, :25], atol=1e-5, rtol=1e-5)


def test_stack_frames_concatenates_and_zeroes_padding():
    frames = torch.arange(2 * 7 * 3, dtype=torch.float32).reshape(2, 7, 3)
    out, lens = stack_frames(frames, torch.tensor([7, 5]), 3)
    assert out.shape == (2, 3, 9) and lens.tolist() == [3, 2]
    torch.testing.assert_close(out[0, 1], frames[0, 3:6].reshape(-1))
    torch.testing.assert_close(out[0, 2], torch.cat([frames[0, 6], torch.zeros(6)]))
    torch.testing.assert_close(out[1, 1], torch.cat([frames[1, 3:5].reshape(-1), torch.zeros(3)]))


# --- connectors -----------------------------------------------------------------------

def test_transformer_connector_ignores_padding():
    torch.manual_seed(0)
    conn = TransformerConnector(12, 20, d_model=16, layers=2, heads=4, ffn=32).eval()
    x = torch.randn(2, 7, 12)
    lens = torch.tensor([4, 7])
    out, out_lens = conn(x, lens)
    garbage = x.clone()
    garbage[0, 4:] = 100 * torch.randn(3, 12)
    out2, _ = conn(garbage, lens)
    assert out.shape == (2, 7, 20) and out_lens.tolist() == [4, 7]
    torch.testing.assert_close(out[0, :4], out2[0, :4])
    assert not torch.allclose(out[0, 4:], out2[0, 4:])


def test_mlp_adapter_is_meralion_v1_with_a_token_budget_or_a_fixed_stack():
    torch.manual_seed(0)
    adapter = MLPAdapter(8, 24, num_tokens=100, in_frames=1500).eval()
    kinds = [type(m) for m in (adapter.norm, *adapter.mlp_adapter, *adapter.llm_proj)]
    assert kinds == [nn.LayerNorm, nn.Linear, nn.SiLU, nn.Dropout, nn.Linear, nn.SiLU, nn.Dropout, nn.Linear]
    assert adapter.k == 15 and [(m.in_features, m.out_features) for m in adapter.modules()
                                if isinstance(m, nn.Linear)] == [(15 * 8, 8), (8, 32), (32, 24)]
    with torch.no_grad():
        adapter.norm.weight.uniform_(0.5, 1.5)
        adapter.norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 600, 8)
    out, lens = adapter(x, torch.tensor([600, 450]))
    assert out.shape == (2, 100, 24) and lens.tolist() == [100, 100]
    normed = F.layer_norm(x[1, :15], (8,), adapter.norm.weight, adapter.norm.bias)
    by_hand = adapter.llm_proj[3](F.silu(adapter.llm_proj[0](F.silu(adapter.mlp_adapter[0](normed.reshape(-1))))))
    torch.testing.assert_close(out[1, 0], by_hand)
    torch.testing.assert_close(out[1, 50], adapter.project(torch.zeros(120)))  # frame 750 on: zero padding
    with pytest.raises(ValueError, match="exceed"):
        adapter(torch.randn(1, 1501, 8), torch.tensor([1501]))
    with pytest.raises(ValueError, match="multiple"):
        MLPAdapter(8, 24, num_tokens=7, in_frames=1500)
    fixed = MLPAdapter(8, 24, stack=4)
    out, lens = fixed(torch.randn(2, 10, 8), torch.tensor([10, 5]))
    assert out.shape == (2, 3, 24) and lens.tolist() == [3, 2]


def test_meralion_adapters_at_paper_size_on_the_meta_device():
    """AudioLLM-Reasoning §4.1: Whisper-large-v3 (1280-d) 1500 frames -> 100 tokens (s = 15), Emotion2Vec+ large
    (1024-d) -> 10 tokens (s = 150), both into Gemma-2-9B's 3584 width.  The counts are in the README."""
    def count(d, s, h):  # LayerNorm + Linear(d·s, d) + Linear(d, 4d) + Linear(4d, H), with biases
        return 2 * d + (d * s * d + d) + (d * 4 * d + 4 * d) + (4 * d * h + h)

    with torch.device("meta"):
        speech = MLPAdapter(1280, 3584, num_tokens=100, in_frames=1500)
        emotion = MLPAdapter(1024, 3584, num_tokens=10, in_frames=1500)
        out, lens = speech(torch.empty(2, 1500, 1280), torch.tensor([1500, 900], device="meta"))
        out_e, _ = emotion(torch.empty(2, 1499, 1024), torch.tensor([1499, 800], device="meta"))
    assert (speech.k, emotion.k) == (15, 150)
    assert out.shape == (2, 100, 3584) and out_e.shape == (2, 10, 3584)
    assert sum(p.numel() for p in speech.parameters()) == count(1280, 15, 3584) == 49_492_224
    assert sum(p.numel() for p in emotion.parameters()) == count(1024, 150, 3584) == 176_171_520


# --- real-size shapes on the meta device --------------------------------------------------

def test_real_size_c2ser_on_meta_device():
    cfg = compose_model("c2ser", ["encoder.name_or_path=null", "llm.name_or_path=null"])
    tok = train_tokenizer(CORPUS, vocab_size=300)
    with torch.device("meta"):
        model = build_alm(cfg, acoustic=StandInE2V(768), tokenizer=tok)

    enc = model.semantic.encoder
    assert enc.config.d_model == 1024 and len(enc.layers) == 24 and enc.conv1.in_channels == 80
    assert enc.layers[0].fc1.weight.shape == (4096, 1024) and model.semantic.out_dim == 4096

    for name, in_dim in (("semantic", 4096), ("acoustic", 768)):
        conn = model.connectors[name]
        assert conn.proj.weight.shape == (1024, in_dim)
        assert len(conn.encoder.layers) == 4
        block = conn.encoder.layers[0]
        assert block.self_attn.num_heads == 4 and block.self_attn.embed_dim == 1024
        assert block.linear1.weight.shape == (2560, 1024) and block.linear2.weight.shape == (1024, 2560)
        assert conn.out.weight.shape == (3584, 1024)
    assert model.utterance_proj.weight.shape == (3584, 768)

    lm = model.lm.get_base_model()
    c = lm.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads,
            c.intermediate_size) == (3584, 28, 28, 4, 18944)
    assert lm.get_input_embeddings().weight.shape == (152064, 3584)
    attn = lm.model.layers[0].self_attn
    assert attn.k_proj.base_layer.weight.shape == (512, 3584)  # 4 kv heads x 128

    lora = {n: m for n, m in lm.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}
    assert len(lora) == 28 * 6
    assert {n.rsplit(".", 1)[1] for n in lora} == LORA_TARGETS
    assert all(m.r["default"] == 8 and m.scaling["default"] == 32 / 8 and m.lora_dropout["default"].p == 0.1
               for m in lora.values())
    shapes = {"q_proj": (3584, 3584), "k_proj": (3584, 512), "v_proj": (3584, 512), "o_proj": (3584, 3584),
              "gate_proj": (3584, 18944), "down_proj": (18944, 3584)}
    lora_params = 28 * sum(8 * (i + o) for i, o in shapes.values())
    assert sum(p.numel() for p in model.lm.parameters() if p.requires_grad) == lora_params
    assert not any(p.requires_grad for p in model.acoustic.parameters())  # Emotion2Vec-S frozen


# --- tiny end to end ----------------------------------------------------------------

def test_tokens_are_spliced_in_time_order_acoustic_first(tiny_dirs):
    model = build_tiny(tiny_dirs).eval()
    batch = make_batch()
    with torch.no_grad():
        tokens = model.audio_tokens(batch)
        e2v = model.acoustic.extract(batch["wav"], batch["wav_lens"])
        utt = model.utterance_proj(e2v["utterance"])
        # c2ser_tiny concatenates 4 Emotion2Vec-S frames per token (acoustic_downsample)
        ac, ac_lens = model.connectors["acoustic"](*stack_frames(e2v["frames"], e2v["frame_lengths"], 4))
        sem, sem_lens = model.connectors["semantic"](*model.semantic(batch["wav"], batch["wav_lens"]))
    for i in range(2):
        want = torch.cat([utt[i:i + 1], ac[i, :ac_lens[i]], sem[i, :sem_lens[i]]])
        torch.testing.assert_close(tokens[i], want)
    assert [len(t) for t in tokens] == [1 + 7 + 7, 1 + 10 + 10]  # 25 and 40 frames -> ceil(/4)


def test_prompt_template_and_placeholder(tiny_dirs):
    model = build_tiny(tiny_dirs)
    ids = model.prompt_ids(PROMPT)
    text = model.tokenizer.decode(ids)
    assert text == f"<|im_start|>user\n{AUDIO_TOKEN}{PROMPT}<|im_end|>\n<|im_start|>assistant\n"
    assert model.prompt_ids(f"Listen: {AUDIO_TOKEN} {PROMPT}").count(model.audio_token_id) == 1
    with pytest.raises(ValueError, match="exactly once"):
        model.prompt_ids(f"{AUDIO_TOKEN}{AUDIO_TOKEN}{PROMPT}")


def test_forward_loss_is_masked_to_the_target(tiny_dirs):
    model = build_tiny(tiny_dirs).eval()
    batch = make_batch()
    with torch.no_grad():
        out = model(batch)
    assert torch.isfinite(out.loss)
    for i, response in enumerate(RESPONSES):
        target = model.target_ids(response)
        assert out.labels[i][out.labels[i] != IGNORE_INDEX].tolist() == target
        assert target[-1] == model.tokenizer.eos_token_id
    # the loss is the CE over target positions only, whatever the logits say elsewhere
    logits, labels = out.logits[:, :-1], out.labels[:, 1:]
    keep = labels != IGNORE_INDEX
    torch.testing.assert_close(out.loss, F.cross_entropy(logits[keep], labels[keep]))
    unmasked = torch.where(keep, labels, 0)  # "labels" on prompt/audio/padding positions change the value
    assert not torch.isclose(out.loss, F.cross_entropy(logits.flatten(0, 1), unmasked.flatten()))
    with torch.no_grad():
        other = model(make_batch(responses=["The emotion is anger.", "The emotion is fear."]))
        other_prompt = model(make_batch(prompts=["Describe the speaking rate, pitch and volume."] * 2))
    assert not torch.isclose(out.loss, other.loss)
    assert other_prompt.labels[other_prompt.labels != IGNORE_INDEX].tolist() == \
        out.labels[out.labels != IGNORE_INDEX].tolist()


def test_overfits_one_batch_and_frozen_parts_get_no_grad(tiny_dirs):
    model = build_tiny(tiny_dirs)
    batch = make_batch()
    model.train()
    assert not model.semantic.training and not model.acoustic.training  # frozen encoders stay in eval
    assert model.connectors.training
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = model(batch).loss
        loss.backward()
        if not losses:
            assert all(p.grad is None for p in model.semantic.parameters())
            assert all(p.grad is None for p in model.acoustic.parameters())
            for part in (model.connectors, model.utterance_proj, model.lm):
                assert all(p.grad is not None for p in part.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses


def test_batched_generation_equals_one_at_a_time(tiny_dirs):
    model = build_tiny(tiny_dirs).eval()
    ws = waves([8000, 14400])
    prompts = [PROMPT, "Describe the speaking rate, pitch and volume, then infer the emotion."]
    batched = model.generate(*pad(ws), prompts, max_new_tokens=8)
    single = [model.generate(*pad([w]), [p], max_new_tokens=8)[0] for w, p in zip(ws, prompts)]
    assert all(isinstance(s, str) for s in batched) and any(batched)
    assert batched == single


def test_generated_ids_are_what_the_loss_scores(tiny_dirs):
    """A rollout's ids end at its first EOS (or at max_new_tokens, without one) and decode to its text;
    a forward on ids scores exactly those tokens: EOS is appended to a text, never to ids."""
    model = build_tiny(tiny_dirs).eval()
    eos = model.tokenizer.eos_token_id
    texts, ids = model.generate(*pad(waves([8000, 12800])), [PROMPT] * 2, max_new_tokens=6, return_ids=True,
                                do_sample=True, top_k=0)
    assert [model.tokenizer.decode(i, skip_special_tokens=True) for i in ids] == texts
    for row in ids:
        assert 1 <= len(row) <= 6 and (eos not in row or row.index(eos) == len(row) - 1)
    cut = model.tokenizer("The speaker sounds", add_special_tokens=False).input_ids  # cut short: no EOS
    with torch.no_grad():
        out = model({**make_batch(), "responses": [cut, "The speaker sounds"]})
    assert out.labels[0][out.labels[0] != IGNORE_INDEX].tolist() == cut
    assert out.labels[1][out.labels[1] != IGNORE_INDEX].tolist() == cut + [eos]


def test_lora_trainable_parameters_match_the_formula(tiny_dirs):
    model = build_tiny(tiny_dirs, "llm.finetune=lora").eval()
    h, kv, inter, layers, r = 64, 2 * 16, 128, 2, 8
    shapes = [(h, h), (h, kv), (h, kv), (h, h), (h, inter), (inter, h)]  # q k v o gate down
    lm_trainable = sum(p.numel() for p in model.lm.parameters() if p.requires_grad)
    assert lm_trainable == layers * sum(r * (i + o) for i, o in shapes)
    names = {n.split(".lora_")[0].rsplit(".", 1)[1] for n, p in model.lm.named_parameters() if p.requires_grad}
    assert names == LORA_TARGETS
    assert len(model.generate(*pad(waves([8000])), [PROMPT], max_new_tokens=3)) == 1


@pytest.mark.parametrize("pitch", [False, True], ids=["whisper", "whisper+pitch"])
def test_forward_from_cached_features_equals_forward_from_waveforms(tiny_dirs, pitch):
    model = build_tiny(tiny_dirs, f"encoder.pitch={pitch}").eval()
    fns = model.feature_fns()
    assert sorted(fns) == ["e2v", "e2v_utt", "whisper"]
    ws = waves([8000, 12800])
    samples = [{"utt": f"u{i}", "meta": {}, "targets": [], "wav": w, "feats": {n: fn(w) for n, fn in fns.items()}}
               for i, w in enumerate(ws)]
    width = 32 + 3 * pitch
    assert samples[0]["feats"]["whisper"].shape == (25, width) and samples[0]["feats"]["e2v_utt"].shape == (1, 16)
    cached = collate(samples)
    del cached["wav"], cached["wav_lens"]
    cached.update(prompts=[PROMPT] * 2, responses=RESPONSES)
    with torch.no_grad():
        from_cache, from_wav = model(cached), model(make_batch())
    torch.testing.assert_close(from_cache.logits, from_wav.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(from_cache.loss, from_wav.loss, atol=1e-5, rtol=1e-5)
    for s in samples:  # the utterance embedding stored as [D] (local.models.e2v_features) reads the same
        s["feats"]["e2v_utt"] = s["feats"]["e2v_utt"][0]
    flat = {**collate(samples), "prompts": [PROMPT] * 2, "responses": RESPONSES}
    del flat["wav"]
    with torch.no_grad():
        torch.testing.assert_close(model(flat).loss, from_wav.loss, atol=1e-5, rtol=1e-5)
    # a trainable encoder is not cacheable
    assert sorted(build_tiny(tiny_dirs, "encoder.freeze=false").feature_fns()) == ["e2v", "e2v_utt"]


def test_feature_concat_fusion(tiny_dirs):
    model = build_tiny(tiny_dirs, "fusion=feature_concat").eval()
    assert model.acoustic_stack == 4  # 50 Hz acoustic frames onto 12.5 Hz semantic frames
    assert model.connectors["fused"].proj.in_features == 4 * (32 + len(PITCH_FEATURES)) + 4 * 16  # tiny: pitch on
    batch = make_batch()
    with torch.no_grad():
        tokens = model.audio_tokens(batch)
        out = model(batch)
    assert [len(t) for t in tokens] == [1 + 7, 1 + 10]  # utterance token + one per semantic frame
    assert torch.isfinite(out.loss)


def test_with_the_real_emotion2vec_s(tiny_dirs):
    torch.manual_seed(0)
    e2v = Emotion2VecS(Emotion2VecConfig.preset("tiny"))
    model = build_tiny(tiny_dirs, acoustic=e2v).eval()
    assert model.utterance_proj.in_features == e2v.config.embed_dim  # acoustic_dim: null reads it
    ws = waves([8000, 12800])
    samples = [{"utt": f"u{i}", "meta": {}, "targets": [], "wav": w,
                "feats": {n: fn(w) for n, fn in model.feature_fns().items()}} for i, w in enumerate(ws)]
    cached = {**collate(samples), "prompts": [PROMPT] * 2, "responses": RESPONSES}
    del cached["wav"]
    batch = make_batch()
    with torch.no_grad():
        from_wav = model(batch)
        frames = e2v.extract(batch["wav"], batch["wav_lens"])["frame_lengths"]
        tokens = model.audio_tokens(batch)
        torch.testing.assert_close(model(cached).loss, from_wav.loss, atol=1e-4, rtol=1e-4)
    assert [len(t) for t in tokens] == [1 + -(-int(frames[0]) // 4) + 7, 1 + -(-int(frames[1]) // 4) + 10]


def test_meralion_adapters_give_fixed_token_budgets(tiny_dirs):
    """AudioLLM-Reasoning's layout: 30 s Whisper -> 100 speech tokens, emotion frames -> 10 tokens."""
    model = build_tiny(tiny_dirs, "connector=meralion", "encoder.padding=30s", "encoder.downsample=1",
                       "audio_prefix='<audio_start><|audio|><audio_end> '").eval()
    assert model.connectors["semantic"].k == 15 and model.connectors["acoustic"].k == 150
    batch = make_batch()
    with torch.no_grad():
        tokens = model.audio_tokens(batch)
        out = model(batch)
    assert [len(t) for t in tokens] == [1 + 10 + 100] * 2
    assert torch.isfinite(out.loss)
    assert model.tokenizer.decode(model.prompt_ids(PROMPT)).startswith("<|im_start|>user\n<audio_start><|audio|>")


# --- feature normalisation -----------------------------------------------------------

def test_feature_norm_statistics_ignore_padding_and_standardise():
    norm = FeatureNorm({"x": 3})
    frames = torch.randn(2, 5, 3) * torch.tensor([0.1, 1.0, 5.0]) + torch.tensor([2.0, -1.0, 0.0])
    lengths = torch.tensor([5, 2])
    frames[1, 2:] = 1e6  # padding must not count
    assert torch.equal(norm("x", frames, lengths), frames)  # not fitted yet: unchanged
    norm.fit([{"x": (frames, lengths)}])
    valid = torch.cat([frames[0], frames[1, :2]]).double()
    torch.testing.assert_close(norm.x_mean.double(), valid.mean(0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(norm.x_std.double(), valid.std(0, unbiased=False), rtol=1e-5, atol=1e-6)
    out = norm("x", frames, lengths)
    assert not out[1, 2:].any()  # padding zeroed
    flat = torch.cat([out[0], out[1, :2]])
    torch.testing.assert_close(flat.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.std(0, unbiased=False), torch.ones(3), atol=1e-4, rtol=0)


def test_speaker_norm_standardises_each_speaker_and_falls_back_to_the_global_statistics():
    gen = torch.Generator().manual_seed(0)

    def utterances(n, loc, scale):
        return [torch.randn(1, 4, 2, generator=gen) * scale + loc for _ in range(n)]

    data = {"a": utterances(MIN_SPEAKER_UTTS, 3.0, 1.0), "b": utterances(MIN_SPEAKER_UTTS, -2.0, 4.0),
            "c": utterances(MIN_SPEAKER_UTTS - 1, 10.0, 1.0)}
    batches = [({"x": (f, torch.tensor([4]))}, [spk]) for spk, fs in data.items() for f in fs]
    norm = FeatureNorm({"x": 2}, mode="speaker")
    norm.fit(feats for feats, _ in batches)
    norm.fit_speakers(batches)
    assert sorted(norm.speakers) == ["a", "b"]  # c has too few utterances
    for spk in "ab":
        n = len(data[spk])
        out = norm("x", torch.cat(data[spk]), torch.full((n,), 4), speakers=[spk] * n).reshape(-1, 2)
        torch.testing.assert_close(out.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
        torch.testing.assert_close(out.std(0, unbiased=False), torch.ones(2), atol=1e-4, rtol=0)
    one = data["c"][0]
    by_global = norm("x", one, torch.tensor([4]))
    torch.testing.assert_close(by_global, (one - norm.x_mean) / norm.x_std)
    assert torch.equal(norm("x", one, torch.tensor([4]), speakers=["c"]), by_global)
    assert torch.equal(norm("x", one, torch.tensor([4]), speakers=["unseen"]), by_global)
    mixed = norm("x", torch.cat([data["a"][0], one]), torch.tensor([4, 2]), speakers=["a", "c"])
    torch.testing.assert_close(mixed[0], norm("x", data["a"][0], torch.tensor([4]), speakers=["a"])[0])
    torch.testing.assert_close(mixed[1, :2], by_global[0, :2])
    assert not mixed[1, 2:].any()  # padding zeroed
    norm.fit_speakers(batches[:MIN_SPEAKER_UTTS])  # a new table replaces the old one
    assert sorted(norm.speakers) == ["a"]
    with pytest.raises(ValueError, match="speakers"):
        norm.fit_speakers([(batches[0][0], None)])
    with pytest.raises(ValueError, match="mode"):
        FeatureNorm({"x": 2}, mode="utterance")


def test_the_model_normalises_by_the_speakers_of_the_batch_in_training_and_generation(tiny_dirs, monkeypatch):
    model = build_tiny(tiny_dirs, "feature_norm=speaker").eval()
    assert model.speaker_norm
    monkeypatch.setattr(feature_norm_module, "MIN_SPEAKER_UTTS", 1)
    batch = {**make_batch(), "meta": [{"spk": "s1"}, {"spk": "s2"}]}
    model.fit_feature_norm([batch])
    model.fit_feature_norm([batch], speakers=True)
    assert sorted(model.feature_norm.speakers) == ["s1", "s2"]
    with torch.no_grad():
        raw = model.encoder_features(batch, normalised=False)["whisper"]
        normed = model.encoder_features(batch)["whisper"]
        by_key = model.encoder_features({**make_batch(), "speakers": ["s1", "s2"]})["whisper"]
    torch.testing.assert_close(by_key[0], normed[0])
    for i, spk in enumerate(["s1", "s2"]):
        n = int(raw[1][i])
        mean, std = model.feature_norm.speakers[spk]["whisper"]
        torch.testing.assert_close(normed[0][i, :n], (raw[0][i, :n] - mean) / std)
        torch.testing.assert_close(normed[0][i, :n].mean(0), torch.zeros_like(mean), atol=1e-4, rtol=0)
    seen = []
    forward = model.feature_norm.forward
    monkeypatch.setattr(model.feature_norm, "forward", lambda *a, **k: seen.append(k.get("speakers")) or forward(*a, **k))
    model.generate(batch["wav"], batch["wav_lens"], batch["prompts"], speakers=["s2", "s1"], max_new_tokens=2)
    assert seen and all(s == ["s2", "s1"] for s in seen)


def test_feature_norm_is_fitted_on_raw_features_saved_and_applied_to_the_cache_alike(tiny_dirs, tmp_path):
    model = build_tiny(tiny_dirs).eval()
    assert sorted(model.feature_norm.names) == ["e2v", "e2v_utt", "whisper"]
    model.fit_feature_norm([make_batch(), make_batch((9600, 4000))])
    with torch.no_grad():
        raw = model.encoder_features(make_batch(), normalised=False)["whisper"]
        normed = model.encoder_features(make_batch())["whisper"]
    torch.testing.assert_close(normed[0][0, :int(raw[1][0])],
                               (raw[0][0, :int(raw[1][0])] - model.feature_norm.whisper_mean) / model.feature_norm.whisper_std)
    # the cache stores raw outputs, and a batch read from it is normalised like one from waveforms
    fns = model.feature_fns()
    samples = [{"utt": f"u{i}", "meta": {}, "targets": [], "wav": w, "feats": {n: fn(w) for n, fn in fns.items()}}
               for i, w in enumerate(waves([8000, 12800]))]
    np.testing.assert_allclose(samples[0]["feats"]["whisper"], raw[0][0, :int(raw[1][0])].numpy(), atol=1e-6)
    cached = {**collate(samples), "prompts": [PROMPT] * 2, "responses": RESPONSES}
    del cached["wav"], cached["wav_lens"]
    with torch.no_grad():
        torch.testing.assert_close(model(cached).loss, model(make_batch()).loss, atol=1e-5, rtol=1e-5)
    save_alm(model, tmp_path / "m")
    loaded = load_alm(tmp_path / "m", acoustic=StandInE2V(16))
    for name, value in model.feature_norm.state_dict().items():
        assert torch.equal(loaded.feature_norm.state_dict()[name], value), name
    state = torch.load(tmp_path / "m" / "trained.pt")
    torch.save({k: v for k, v in state.items() if not k.startswith("feature_norm.")}, tmp_path / "m" / "trained.pt")
    with pytest.raises(ValueError, match="missing.*feature_norm"):
        load_alm(tmp_path / "m", acoustic=StandInE2V(16))
