"""A tiny C²SER release in the official key layout, and the official computation re-derived by hand.

Written from the official code (zxzhao0/C2SER @ 9316974: infer_runtime.py, llmasr_model.py,
downsampler.py, wenet/transformer/*) and independently of local/models/c2ser_release.py:
plain tensor ops on the state dict, explicit attention, a hand-written Qwen2 forward with
the LoRA merged, and a greedy loop that recomputes the whole sequence each step.
"""
from __future__ import annotations

import math
from pathlib import Path

import librosa
import torch
import torch.nn.functional as F

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj")
SIZES = dict(n_mels=80, d=32, enc_heads=2, enc_units=64, enc_blocks=2, conn_heads=4, conn_units=48, conn_blocks=2,
             hidden=32, llm_layers=2, llm_heads=4, llm_kv=2, llm_units=48, speech_token_num=5, rank=8, alpha=32)
WORDS = ("Please describe consider the speaking style , content and speaker 's emotional state of this speech . "
         "directly provide emotion in anger happiness neutral sadness surprise disgust fear sounds happy sad angry "
         "calm a an it is was very").split()


def _whisper_pe(length, dim):
    inc = math.log(10000) / (dim // 2 - 1)
    t = torch.arange(length)[:, None].float() * torch.exp(-inc * torch.arange(dim // 2).float())[None]
    return torch.cat([t.sin(), t.cos()], 1)


def _espnet_pe(length, dim):
    pos = torch.arange(length).float()[:, None]
    div = torch.exp(torch.arange(0, dim, 2).float() * -(math.log(10000.0) / dim))
    pe = torch.zeros(length, dim)
    pe[:, 0::2], pe[:, 1::2] = (pos * div).sin(), (pos * div).cos()
    return pe


def _wenet_keys(sd, prefix, d, units, blocks, key_bias, g):
    def lin(name, o, i, bias=True):
        sd[f"{name}.weight"] = torch.randn(o, i, generator=g) / math.sqrt(i)
        if bias:
            sd[f"{name}.bias"] = 0.1 * torch.randn(o, generator=g)

    def ln(name):
        sd[f"{name}.weight"] = 1 + 0.1 * torch.randn(d, generator=g)
        sd[f"{name}.bias"] = 0.1 * torch.randn(d, generator=g)

    for i in range(blocks):
        p = f"{prefix}.encoders.{i}"
        for n in ("q", "k", "v", "out"):
            lin(f"{p}.self_attn.linear_{n}", d, d, bias=key_bias or n != "k")
        lin(f"{p}.feed_forward.w_1", units, d)
        lin(f"{p}.feed_forward.w_2", d, units)
        ln(f"{p}.norm1")
        ln(f"{p}.norm2")
    ln(f"{prefix}.after_norm")
    return lin, ln


def build_release(root: Path, seed: int = 0):
    """Write ``C2SER_llm.pt`` (bf16), ``qwen/`` (config + tokenizer) and ``config.yaml`` under ``root``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast, Qwen2Config

    s, g = SIZES, torch.Generator().manual_seed(seed)
    d, h = s["d"], s["hidden"]
    sd = {}
    lin, ln = _wenet_keys(sd, "encoder", d, s["enc_units"], s["enc_blocks"], False, g)
    for name, i in (("encoder.embed.conv.0", s["n_mels"]), ("encoder.embed.conv.2", d)):
        sd[f"{name}.weight"] = torch.randn(d, i, 3, generator=g) / math.sqrt(3 * i)
        sd[f"{name}.bias"] = 0.1 * torch.randn(d, generator=g)
    sd["encoder.embed.pos_enc.pe"] = _whisper_pe(1500, d)[None]
    ln("ln_speech")
    _wenet_keys(sd, "speech_transformer", d, s["conn_units"], s["conn_blocks"], True, g)
    lin("speech_transformer.embed.out.0", d, d)
    ln("speech_transformer.embed.out.1")
    sd["speech_transformer.embed.pos_enc.pe"] = _espnet_pe(5000, d)[None]
    for j in (1, 4, 7):
        sd[f"down_sample_2.conv.{j}.weight"] = torch.randn(d, d, 3, generator=g) / math.sqrt(3 * d)
        sd[f"down_sample_2.conv.{j}.bias"] = 0.1 * torch.randn(d, generator=g)
    lin("speech_llama_proj", h, d)
    sd["speech_token_emded.weight"] = torch.randn(s["speech_token_num"] + 2, h, generator=g)
    lin("speaker_head", s["speech_token_num"], h)

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {w: i for i, w in enumerate(specials + ["<unk>"] + list(dict.fromkeys(WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")   # joins with spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", unk_token="<unk>",
                                        additional_special_tokens=specials[1:])
    qwen = root / "qwen"
    tokenizer.save_pretrained(qwen)
    vocab_size = len(vocab) + 6   # spare rows, as Qwen2's 152064 > its tokenizer
    config = Qwen2Config(vocab_size=vocab_size, hidden_size=h, intermediate_size=s["llm_units"],
                         num_hidden_layers=s["llm_layers"], num_attention_heads=s["llm_heads"],
                         num_key_value_heads=s["llm_kv"], max_position_embeddings=512, rope_theta=10000.0,
                         rms_norm_eps=1e-6, tie_word_embeddings=False, eos_token_id=0, bos_token_id=0)
    config.save_pretrained(qwen)
    p = "llama_model.base_model.model."
    sd[p + "model.embed_tokens.weight"] = torch.randn(vocab_size, h, generator=g)
    sd[p + "lm_head.weight"] = torch.randn(vocab_size, h, generator=g) / math.sqrt(h)
    sd[p + "model.norm.weight"] = 1 + 0.1 * torch.randn(h, generator=g)
    hd = h // s["llm_heads"]
    shapes = {"q_proj": (h, h, True), "k_proj": (s["llm_kv"] * hd, h, True), "v_proj": (s["llm_kv"] * hd, h, True),
              "o_proj": (h, h, False), "gate_proj": (s["llm_units"], h, False),
              "up_proj": (s["llm_units"], h, False), "down_proj": (h, s["llm_units"], False)}
    for i in range(s["llm_layers"]):
        layer = f"{p}model.layers.{i}."
        sd[layer + "input_layernorm.weight"] = 1 + 0.1 * torch.randn(h, generator=g)
        sd[layer + "post_attention_layernorm.weight"] = 1 + 0.1 * torch.randn(h, generator=g)
        for name, (o, i_, bias) in shapes.items():
            mod = layer + ("self_attn." if name in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp.") + name
            base = mod + (".base_layer" if name in TARGETS else "")
            sd[base + ".weight"] = torch.randn(o, i_, generator=g) / math.sqrt(i_)
            if bias:
                sd[base + ".bias"] = 0.1 * torch.randn(o, generator=g)
            if name in TARGETS:
                sd[mod + ".lora_A.default.weight"] = torch.randn(s["rank"], i_, generator=g) / math.sqrt(i_)
                sd[mod + ".lora_B.default.weight"] = 0.05 * torch.randn(o, s["rank"], generator=g)
    sd = {k: v.to(torch.bfloat16) for k, v in sd.items()}
    sd["embed_tokens.weight"] = sd[p + "model.embed_tokens.weight"].clone()   # the official aliases
    sd["lm_head.weight"] = sd[p + "lm_head.weight"].clone()
    torch.save(sd, root / "C2SER_llm.pt")
    (root / "config.yaml").write_text(
        "use_lora: true\nlora_alpha: 32\nlora_rank: 8\nlora_dropout: 0.1\nspeech_token_num: 5\n"
        "downsample_rate: 4\nadapter_type: gxl\ninput_dim: 80\n"
        "encoder_conf:\n  activation_type: gelu\n  attention_heads: 2\n  input_layer: conv1d2\n"
        "  normalize_before: true\n  key_bias: false\n  output_size: 32\n", encoding="utf-8")
    return root / "C2SER_llm.pt", qwen, root / "config.yaml", {k: v.float() for k, v in sd.items()}


# --- the official computation, by hand ---------------------------------------------------------

def official_mel(wav):
    """infer_runtime.py:53-71 -> [frames, 80]."""
    stft = torch.stft(wav, 400, 160, window=torch.hann_window(400), return_complex=True)
    mag = stft[..., :-1].abs() ** 2
    filters = torch.from_numpy(librosa.filters.mel(sr=16000, n_fft=400, n_mels=80))
    log_spec = torch.clamp(filters @ mag, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).transpose(0, 1)


def _wenet_layers(sd, prefix, x, heads, act):
    d = x.shape[-1]
    for i in range(sum(1 for k in sd if k.startswith(f"{prefix}.encoders.") and k.endswith("norm1.weight"))):
        p = f"{prefix}.encoders.{i}."
        y = F.layer_norm(x, (d,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], 1e-5)
        q, k, v = (F.linear(y, sd[p + f"self_attn.linear_{n}.weight"], sd.get(p + f"self_attn.linear_{n}.bias"))
                   for n in "qkv")
        t, dk = x.shape[1], d // heads
        q, k, v = (z.view(1, t, heads, dk).transpose(1, 2) for z in (q, k, v))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dk), -1) @ v
        x = x + F.linear(att.transpose(1, 2).reshape(1, t, d), sd[p + "self_attn.linear_out.weight"],
                         sd[p + "self_attn.linear_out.bias"])
        y = F.layer_norm(x, (d,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], 1e-5)
        y = act(F.linear(y, sd[p + "feed_forward.w_1.weight"], sd[p + "feed_forward.w_1.bias"]))
        x = x + F.linear(y, sd[p + "feed_forward.w_2.weight"], sd[p + "feed_forward.w_2.bias"])
    return F.layer_norm(x, (d,), sd[f"{prefix}.after_norm.weight"], sd[f"{prefix}.after_norm.bias"], 1e-5)


def official_audio(sd, wav, ssl):
    """get_embedding_from_wav(only_ssl=False) + speech_llama_proj -> [1, 10 + T, hidden]."""
    s = SIZES
    gelu = lambda z: z * 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))  # noqa: E731  New_gelu4npu
    x = official_mel(wav).T[None]
    x = gelu(F.conv1d(x, sd["encoder.embed.conv.0.weight"], sd["encoder.embed.conv.0.bias"], padding=1))
    x = gelu(F.conv1d(x, sd["encoder.embed.conv.2.weight"], sd["encoder.embed.conv.2.bias"], stride=2, padding=1))
    x = x.transpose(1, 2)
    x = x * 1.0 + sd["encoder.embed.pos_enc.pe"][:, :x.shape[1]]
    x = _wenet_layers(sd, "encoder", x, s["enc_heads"], gelu).transpose(1, 2)
    for j, stride in ((1, 1), (4, 2), (7, 2)):
        x = F.gelu(F.conv1d(F.pad(x, (2, 0)), sd[f"down_sample_2.conv.{j}.weight"],
                            sd[f"down_sample_2.conv.{j}.bias"], stride=stride))
    x = torch.cat([F.pad(ssl, (0, s["d"] - ssl.shape[1]))[None], x.transpose(1, 2)], 1)
    x = F.linear(x, sd["speech_transformer.embed.out.0.weight"], sd["speech_transformer.embed.out.0.bias"])
    x = F.layer_norm(x, (s["d"],), sd["speech_transformer.embed.out.1.weight"],
                     sd["speech_transformer.embed.out.1.bias"], 1e-5)
    x = x * math.sqrt(s["d"]) + sd["speech_transformer.embed.pos_enc.pe"][:, :x.shape[1]]
    x = _wenet_layers(sd, "speech_transformer", x, s["conn_heads"], F.relu)
    return F.linear(x, sd["speech_llama_proj.weight"], sd["speech_llama_proj.bias"])


def merged_llm(sd):
    """Qwen2 weights with W + (alpha/r) B A folded in, under plain names."""
    p, out = "llama_model.base_model.model.", {}
    for k, v in sd.items():
        if not k.startswith(p) or ".lora_" in k:
            continue
        name = k[len(p):].replace(".base_layer", "")
        if ".base_layer.weight" in k:
            mod = k[:-len(".base_layer.weight")]
            v = v + SIZES["alpha"] / SIZES["rank"] * (sd[mod + ".lora_B.default.weight"] @ sd[mod + ".lora_A.default.weight"])
        out[name] = v
    return out


def qwen2_logits(w, embeds):
    """A hand-written Qwen2 forward (RMSNorm, rotary, GQA, SwiGLU) over [1, L, H] -> [L, vocab]."""
    s = SIZES
    h, heads, kv = s["hidden"], s["llm_heads"], s["llm_kv"]
    hd, L = h // heads, embeds.shape[1]

    def rms(x, wt):
        return wt * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))

    inv = 1.0 / (10000.0 ** (torch.arange(0, hd, 2).float() / hd))
    ang = torch.arange(L).float()[:, None] * inv[None]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
    rot = lambda z: torch.cat([-z[..., hd // 2:], z[..., :hd // 2]], -1)  # noqa: E731
    causal = torch.full((L, L), float("-inf")).triu(1)
    x = embeds[0]
    for i in range(s["llm_layers"]):
        p = f"model.layers.{i}."
        y = rms(x, w[p + "input_layernorm.weight"])
        q = F.linear(y, w[p + "self_attn.q_proj.weight"], w[p + "self_attn.q_proj.bias"]).view(L, heads, hd).transpose(0, 1)
        k = F.linear(y, w[p + "self_attn.k_proj.weight"], w[p + "self_attn.k_proj.bias"]).view(L, kv, hd).transpose(0, 1)
        v = F.linear(y, w[p + "self_attn.v_proj.weight"], w[p + "self_attn.v_proj.bias"]).view(L, kv, hd).transpose(0, 1)
        q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
        k, v = k.repeat_interleave(heads // kv, 0), v.repeat_interleave(heads // kv, 0)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + causal, -1) @ v
        x = x + F.linear(att.transpose(0, 1).reshape(L, h), w[p + "self_attn.o_proj.weight"])
        y = rms(x, w[p + "post_attention_layernorm.weight"])
        y = F.silu(F.linear(y, w[p + "mlp.gate_proj.weight"])) * F.linear(y, w[p + "mlp.up_proj.weight"])
        x = x + F.linear(y, w[p + "mlp.down_proj.weight"])
    return F.linear(rms(x, w["model.norm.weight"]), w["lm_head.weight"])


def official_inputs(sd, tokenizer, wav, ssl, prompt):
    """[prompt embeds ; emded[N] ; audio ; emded[N+1]] (llmasr_model.py:315-330)."""
    w = merged_llm(sd)
    n = SIZES["speech_token_num"]
    ids = tokenizer([prompt], return_tensors="pt").input_ids[0]
    rows = sd["speech_token_emded.weight"]
    return torch.cat([w["model.embed_tokens.weight"][ids][None], rows[n][None, None], official_audio(sd, wav, ssl),
                      rows[n + 1][None, None]], 1), w


def official_greedy(sd, tokenizer, wav, ssl, prompt, max_new_tokens, eos):
    """(new ids, first-step logits) by argmax, recomputing the whole sequence every step."""
    embeds, w = official_inputs(sd, tokenizer, wav, ssl, prompt)
    ids, first = [], None
    for _ in range(max_new_tokens):
        logits = qwen2_logits(w, embeds)[-1]
        first = logits if first is None else first
        nxt = int(logits.argmax())
        ids.append(nxt)
        if nxt == eos:
            break
        embeds = torch.cat([embeds, w["model.embed_tokens.weight"][nxt][None, None]], 1)
    return torch.tensor(ids), first
