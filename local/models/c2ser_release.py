"""The released C²SER checkpoint (``ASLP-lab/C2SER-LLM``, ``C2SER_llm.pt``) with the official numerics.

The release is the ``state_dict`` of the official ``LLMASR_Model`` (a WeNet fork),
so this module rebuilds that module tree under the same attribute names and
loads the file with strict key accounting: the official loader uses
``strict=False``, which would hide any naming slip as silently random weights.

Computation of ``generate`` (official ``llmasr_model.py:304-354``)::

    wav ─ log-mel (infer_runtime.py:53-71) ─ encoder (WeNet Whisper, conv1d2, pe scale 1)
        ─ down_sample_2 (pad-conv-GELU ×3, x4) ─ cat([ssl(10) zero-padded ; frames], time)
        ─ speech_transformer (WeNet, Linear+LN, pe scaled by sqrt(d), ReLU FFN)
        ─ speech_llama_proj
    LLM input: prompt ids (no chat template) ─ speech_token_emded[N] ─ audio ─ speech_token_emded[N+1]

The audio side runs in float32 whatever ``dtype`` is: the official modules are
built in float32 and ``load_state_dict`` upcasts the release's bf16 values into
them; only the LLM is bf16 there.  Both positional tables are buffers saved in
the checkpoint (in bf16), and the official load copies them over the computed
ones, so the checkpoint's values are the ones used here too (after checking they
are the sinusoids they should be, which catches a wrong layout).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from local.models.wenet import Downsample4, WenetEncoder, espnet_table, whisper_table

logger = logging.getLogger(__name__)

#: Prompts of ``C2SER-llm/prompt_config.yaml`` (every task lists one text five times).
PROMPTS = {
    "explicit": "Please describe the speaking style, content, and the speaker's emotional state of this speech.",
    "implicit": "Please consider the speaking style, content, and directly provide the speaker's emotion in this speech.",
}
#: The seven training categories, as the paper names them (c2ser.txt §IV.A l.141, label-extraction prompt l.276);
#: Emo-Emilia's jsonl spells them angry/happy/neutral/sad/surprised/disgusted/fearful.
LABELS = ("anger", "happiness", "neutral", "sadness", "surprise", "disgust", "fear")
#: ``LLMASR_Model.__init__`` / ``generate`` hard-coded decoding (llmasr_model.py:80-88, 336-350).
OFFICIAL_GENERATION = dict(max_new_tokens=400, num_beams=4, do_sample=True, min_length=1, top_p=0.0, top_k=0,
                           repetition_penalty=1.05, length_penalty=1.0, temperature=1.0,
                           eos_token_id=151643, pad_token_id=-100)
EOD_TOKEN = "<|endoftext|>"          # id 151643 in Qwen2's tokenizer: the training targets' eod_id
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj")  # llmasr_model.py:96
#: Values the checkpoint's shapes cannot tell; the release's (config.yaml, llmasr_model.py:44-56, 29).
RELEASE_DEFAULTS = {"encoder_heads": 16, "encoder_activation": "gelu", "connector_heads": 4,
                    "connector_activation": "relu", "lora_alpha": 32, "lora_dropout": 0.1}
NUM_SSL_TOKENS = 10
SSL_TOKEN_CHOICES = ("frames", "extra")
N_FFT, HOP, SAMPLE_RATE = 400, 160, 16000
LLM_PREFIX = "llama_model."
PEFT_PREFIX = "base_model.model."


class ReleasedC2SER(nn.Module):
    """The official module tree; build with :func:`load_c2ser_release`.

    ``ln_speech`` and ``speaker_head`` are loaded (they are in the release) but
    unused: ``generate`` never calls them (llmasr_model.py:40,147,157-189).
    """

    def __init__(self, sizes: dict, llm: nn.Module, tokenizer, e2v: nn.Module | None = None):
        super().__init__()
        s = self.sizes = sizes
        self.encoder = WenetEncoder(True, s["n_mels"], s["enc_dim"], s["encoder_heads"], s["enc_units"],
                                    s["enc_blocks"], s["enc_key_bias"], s["encoder_activation"], s["enc_pe"])
        self.ln_speech = nn.LayerNorm(s["enc_dim"])
        self.speech_transformer = WenetEncoder(
            False, s["enc_dim"], s["conn_dim"], s["connector_heads"], s["conn_units"], s["conn_blocks"],
            s["conn_key_bias"], s["connector_activation"], s["conn_pe"])
        self.llama_model = llm
        self.down_sample_2 = Downsample4(s["enc_dim"])
        self.speech_llama_proj = nn.Linear(s["conn_dim"], s["hidden"])
        self.speech_token_emded = nn.Embedding(s["speech_token_num"] + 2, s["hidden"])
        self.speaker_head = nn.Linear(s["hidden"], s["speaker_out"])
        self.tokenizer = tokenizer
        self.e2v = e2v
        self.ssl_tokens = "frames"
        vocab = tokenizer.get_vocab()
        self.eos_id = vocab[EOD_TOKEN] if EOD_TOKEN in vocab else tokenizer.eos_token_id
        if self.eos_id is None:
            raise ValueError(f"the tokenizer has neither {EOD_TOKEN} nor an eos token")
        if len(vocab) > OFFICIAL_GENERATION["eos_token_id"] and self.eos_id != OFFICIAL_GENERATION["eos_token_id"]:
            raise ValueError(f"{EOD_TOKEN} is id {self.eos_id}, not the release's 151643: not a Qwen2 tokenizer?")
        from transformers import WhisperFeatureExtractor
        filters = WhisperFeatureExtractor(feature_size=s["n_mels"]).mel_filters  # librosa's slaney filters
        # explicit device: the loader builds the module under torch.device("meta")
        self.register_buffer("mel_filters", torch.tensor(filters.T, dtype=torch.float32, device="cpu"),
                             persistent=False)
        self.register_buffer("window", torch.hann_window(N_FFT, device="cpu"), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.speech_llama_proj.weight.device

    @property
    def llm_dtype(self) -> torch.dtype:
        return self.llama_model.get_input_embeddings().weight.dtype

    # --- audio ----------------------------------------------------------------

    def log_mel(self, wav: Tensor) -> Tensor:
        """[samples] -> [frames, n_mels], the official front end (infer_runtime.py:53-71): centred
        reflect-padded STFT of the signal itself, last frame dropped, no 30-s padding."""
        stft = torch.stft(wav.float(), N_FFT, HOP, window=self.window, return_complex=True)
        power = stft[..., :-1].abs() ** 2
        log_spec = torch.clamp(self.mel_filters @ power, min=1e-10).log10()
        log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
        return ((log_spec + 4.0) / 4.0).transpose(0, 1)

    def _check_wav(self, wav) -> Tensor:
        wav = torch.as_tensor(wav)
        if wav.dim() != 1 or not wav.is_floating_point():
            raise ValueError(f"wav must be a float 1-D 16-kHz mono signal, got {wav.dtype} {tuple(wav.shape)}")
        if wav.numel() <= N_FFT // 2:
            raise ValueError(f"wav of {wav.numel()} samples is too short (more than {N_FFT // 2} needed)")
        frames = (wav.numel() // HOP + 1) // 2
        limit = self.encoder.embed.pos_enc.pe.shape[1]
        if frames > limit:
            raise ValueError(f"wav of {wav.numel() / SAMPLE_RATE:.2f} s gives {frames} encoder frames; the released "
                             f"encoder's positional table holds {limit} ({limit * 2 * HOP / SAMPLE_RATE:.0f} s)")
        return wav.to(self.device, torch.float32)

    @torch.no_grad()
    def release_audio_embeddings(self, wav: Tensor, ssl_features: Tensor) -> Tensor:
        """[1, 10 + frames/4, hidden] audio embeddings, before the speech BOS/EOS rows."""
        wav = self._check_wav(wav)
        width = self.speech_transformer.embed.out[0].in_features
        ssl = torch.as_tensor(ssl_features)
        if ssl.dim() != 2 or ssl.shape[0] != NUM_SSL_TOKENS or ssl.shape[1] > width:
            raise ValueError(f"ssl_features must be [{NUM_SSL_TOKENS}, D] with D <= {width}, got {tuple(ssl.shape)}")
        ssl = F.pad(ssl.to(self.device, torch.float32), (0, width - ssl.shape[1]))  # infer_runtime.py:79-80
        frames = self.down_sample_2(self.encoder(self.log_mel(wav)[None]))
        joint = self.speech_transformer(torch.cat([ssl[None], frames], dim=1))
        return self.speech_llama_proj(joint)

    @torch.no_grad()
    def ssl_features(self, wav: Tensor, ssl_tokens: str | None = None) -> Tensor:
        """[10, D] utterance tokens from the attached Emotion2Vec-S, waveform not normalised.

        ``ssl_tokens``: "frames" (default, :attr:`ssl_tokens`) = the first 10 frames after
        stripping the extra tokens, what the released ``data2vec2.py:360-369`` computes;
        "extra" = the 10 extra tokens.  Which one the checkpoint was trained on is unknown.
        """
        choice = ssl_tokens or self.ssl_tokens
        if choice not in SSL_TOKEN_CHOICES:
            raise ValueError(f"ssl_tokens must be one of {SSL_TOKEN_CHOICES}, got '{choice}'")
        if self.e2v is None:
            raise ValueError("no Emotion2Vec-S attached: pass e2v= to load_c2ser_release or give ssl_features")
        wav = self._check_wav(wav)
        feats, lengths = self.e2v.local_features(wav[None])
        x = self.e2v.encode(feats, lengths).x[0].float()
        extra = self.e2v.config.num_extra_tokens
        if extra != NUM_SSL_TOKENS:
            raise ValueError(f"Emotion2Vec-S has {extra} extra tokens, C²SER wants {NUM_SSL_TOKENS}")
        if choice == "extra":
            return x[:extra]
        if x.shape[0] < extra + NUM_SSL_TOKENS:
            raise ValueError(f"wav gives {x.shape[0] - extra} Emotion2Vec-S frames, fewer than {NUM_SSL_TOKENS}")
        return x[extra:extra + NUM_SSL_TOKENS]

    # --- LLM ------------------------------------------------------------------

    def _inputs_embeds(self, wav: Tensor, ssl_features: Tensor, prompt: str) -> Tensor:
        """[1, L, hidden]: prompt, speech BOS, audio, speech EOS (llmasr_model.py:315-334)."""
        audio = self.release_audio_embeddings(wav, ssl_features)
        n = self.sizes["speech_token_num"]
        rows = self.speech_token_emded(torch.tensor([n, n + 1], device=self.device)).float()
        parts = [rows[None, :1], audio, rows[None, 1:]]
        if prompt != "<no_prompt>":   # the official way to give no prompt
            ids = self.tokenizer([prompt], return_tensors="pt").input_ids.to(self.device)  # Qwen2 adds no BOS
            parts.insert(0, self.llama_model.get_input_embeddings()(ids).float())
        return torch.cat(parts, dim=1).to(self.llm_dtype)

    @torch.no_grad()
    def release_generate(self, wav: Tensor, ssl_features: Tensor, prompt: str, max_new_tokens: int,
                         greedy: bool = True) -> tuple[Tensor, Tensor]:
        """(new token ids [n], eos included when reached; float32 logits [vocab] of the first step).

        ``greedy=False`` decodes with :data:`OFFICIAL_GENERATION` (beam 4 with sampling: not
        deterministic, and top_p 0 keeps each beam's 2 best tokens).
        """
        from transformers import GenerationConfig
        embeds = self._inputs_embeds(wav, ssl_features, prompt)
        settings = dict(do_sample=False, num_beams=1) if greedy else {
            k: v for k, v in OFFICIAL_GENERATION.items() if k not in ("max_new_tokens", "eos_token_id")}
        config = GenerationConfig(**settings, max_new_tokens=max_new_tokens, eos_token_id=self.eos_id,
                                  output_logits=True, return_dict_in_generate=True)
        if greedy:
            config.pad_token_id = self.eos_id
        out = self.llama_model.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long,
                                        device=self.device), generation_config=config, use_model_defaults=False)
        return out.sequences[0].cpu(), out.logits[0][0].float().cpu()

    def respond(self, wav: np.ndarray, prompt: str, max_new_tokens: int = 400, greedy: bool = True) -> str:
        """Text answer for a 16-kHz mono waveform, SSL features from the attached Emotion2Vec-S."""
        wav = torch.as_tensor(np.asarray(wav, dtype=np.float32))
        ids, _ = self.release_generate(wav, self.ssl_features(wav), prompt, max_new_tokens, greedy=greedy)
        return self.tokenizer.decode(ids.tolist(), skip_special_tokens=True)

    @torch.no_grad()
    def continuation_logprobs(self, wav: np.ndarray, prompt: str, continuations: list[str]) -> Tensor:
        """[len(continuations)] sums of each text's token log-probs, teacher-forced right after the
        speech EOS (no eod appended), as float32."""
        if not continuations:
            raise ValueError("continuations is empty")
        wav = torch.as_tensor(np.asarray(wav, dtype=np.float32))
        prefix = self._inputs_embeds(wav, self.ssl_features(wav), prompt)
        ids = [self.tokenizer(text, add_special_tokens=False).input_ids for text in continuations]
        empty = [text for text, row in zip(continuations, ids) if not row]
        if empty:
            raise ValueError(f"continuations {empty!r} have no tokens")
        width, start = max(map(len, ids)), prefix.shape[1]
        tokens = torch.tensor([row + [self.eos_id] * (width - len(row)) for row in ids], device=self.device)
        mask = torch.tensor([[1] * (start + len(row)) + [0] * (width - len(row)) for row in ids], device=self.device)
        embeds = torch.cat([prefix.expand(len(ids), -1, -1), self.llama_model.get_input_embeddings()(tokens)], 1)
        logits = self.llama_model(inputs_embeds=embeds, attention_mask=mask).logits[:, start - 1:-1].float()
        picked = logits.log_softmax(-1).gather(-1, tokens[..., None])[..., 0]
        return (picked * mask[:, start:].float()).sum(-1).cpu()


# --- loading -----------------------------------------------------------------

def _prefixed_indices(state: dict, prefix: str) -> int:
    found = {int(m.group(1)) for k in state for m in [re.match(re.escape(prefix) + r"(\d+)\.", k)] if m}
    if found != set(range(len(found))):
        raise ValueError(f"block indices under {prefix} are not 0..n-1: {sorted(found)}")
    return len(found)


def _shape(state: dict, key: str, source: str) -> torch.Size:
    if key not in state:
        raise ValueError(f"{source}: no '{key}', needed to size the model (not a C²SER release?)")
    return state[key].shape


def _sizes(state: dict, conf: dict, source: str) -> dict:
    """Architecture from the tensors' shapes; heads and activations from the config or defaults."""
    enc = conf.get("encoder_conf") or {}
    if conf.get("adapter_type", "gxl") != "gxl" or conf.get("downsample_rate", 4) != 4:
        raise ValueError(f"{source}: only adapter_type gxl with downsample_rate 4 (the release) is supported")
    if not enc.get("normalize_before", True) or enc.get("input_layer", "conv1d2") != "conv1d2":
        raise ValueError(f"{source}: only the pre-LN conv1d2 Whisper encoder (the release) is supported")
    conv0 = _shape(state, "encoder.embed.conv.0.weight", source)
    lin0 = _shape(state, "speech_transformer.embed.out.0.weight", source)
    emded = _shape(state, "speech_token_emded.weight", source)
    pe = state.get("encoder.embed.pos_enc.pe")
    conn_pe = state.get("speech_transformer.embed.pos_enc.pe")
    return {
        "n_mels": conv0[1], "enc_dim": conv0[0], "enc_blocks": _prefixed_indices(state, "encoder.encoders."),
        "enc_units": _shape(state, "encoder.encoders.0.feed_forward.w_1.weight", source)[0],
        "enc_key_bias": "encoder.encoders.0.self_attn.linear_k.bias" in state,
        "enc_pe": pe.shape[1] if pe is not None else 1500,
        "conn_dim": lin0[0], "conn_blocks": _prefixed_indices(state, "speech_transformer.encoders."),
        "conn_units": _shape(state, "speech_transformer.encoders.0.feed_forward.w_1.weight", source)[0],
        "conn_key_bias": "speech_transformer.encoders.0.self_attn.linear_k.bias" in state,
        "conn_pe": conn_pe.shape[1] if conn_pe is not None else 5000,
        "hidden": _shape(state, "speech_llama_proj.weight", source)[0],
        "speech_token_num": emded[0] - 2, "speaker_out": _shape(state, "speaker_head.weight", source)[0],
        "encoder_heads": enc.get("attention_heads", RELEASE_DEFAULTS["encoder_heads"]),
        "encoder_activation": enc.get("activation_type", RELEASE_DEFAULTS["encoder_activation"]),
        "connector_heads": RELEASE_DEFAULTS["connector_heads"],          # hard-coded, llmasr_model.py:46
        "connector_activation": RELEASE_DEFAULTS["connector_activation"],  # TransformerEncoder default
        "lora_alpha": conf.get("lora_alpha", RELEASE_DEFAULTS["lora_alpha"]),
        "lora_dropout": conf.get("lora_dropout", RELEASE_DEFAULTS["lora_dropout"]),
    }


def _lora_rank(state: dict, source: str) -> int:
    ranks = {v.shape[0] for k, v in state.items() if k.endswith(".lora_A.default.weight")}
    if len(ranks) != 1:
        raise ValueError(f"{source}: expected LoRA A matrices of one rank, found ranks {sorted(ranks)}")
    return ranks.pop()


def _llm_key(key: str, merge: bool) -> tuple[str, str]:
    """(our key, role) for an official ``llama_model.`` key; role: plain, base, lora_A, lora_B."""
    name = key[len(LLM_PREFIX):]
    m = re.match(r"(.*\.(?:%s))\.(base_layer\.)?(weight|bias)$" % "|".join(LORA_TARGETS), name)
    if m and not name.endswith((".lora_A.default.weight", ".lora_B.default.weight")):
        module, _, param = m.groups()   # old peft saved the base weight without "base_layer."
        return (module[len(PEFT_PREFIX):] + "." + param, "base") if merge else (f"{module}.base_layer.{param}", "base")
    m = re.match(r"(.*)\.(lora_[AB])\.default\.weight$", name)
    if m and merge:
        return m.group(1)[len(PEFT_PREFIX):] + ".weight", m.group(2)
    if merge:
        return (name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else "\0" + name), "plain"
    return name, "plain"


def _near(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a.float(), b.float(), rtol=1e-2, atol=1e-2)


def _first(keys, n: int = 5) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else f" ({len(keys)})")


def load_c2ser_release(checkpoint: str | Path, llm_dir: str | Path, official_config: str | Path | None = None, *,
                       e2v=None, merge_lora: bool = False, device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float32) -> ReleasedC2SER:
    """Build the official module tree and load ``C2SER_llm.pt`` into it, every key accounted for.

    ``llm_dir`` gives the Qwen2 config and tokenizer only (every LLM weight is in the
    checkpoint).  ``e2v``: an Emotion2Vec-S ``checkpoint.pt`` path (emotion2vec_base size
    unless a ``config.yaml`` sits beside it) or a built ``Emotion2VecS``.  ``dtype`` is the
    LLM's; the audio side is float32, as officially.  ``merge_lora`` folds W + (alpha/r)·B·A
    into plain weights; otherwise the LoRA stays unmerged in a peft model.
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = str(checkpoint)
    state = torch.load(checkpoint, map_location="cpu", mmap=True, weights_only=True)
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{source}: not a state dict")
    conf = yaml.safe_load(Path(official_config).read_text(encoding="utf-8")) if official_config else {}
    if conf and not conf.get("use_lora", True):
        raise ValueError(f"{official_config}: use_lora false is not the release layout")
    sizes = _sizes(state, conf, source)
    rank = _lora_rank(state, source)
    for name, value in (("lora_rank", rank), ("speech_token_num", sizes["speech_token_num"]), ("input_dim", sizes["n_mels"])):
        if conf.get(name, value) != value:
            raise ValueError(f"{official_config}: {name} {conf[name]} but the checkpoint's tensors give {value}")
    llm_config = AutoConfig.from_pretrained(llm_dir)
    if llm_config.hidden_size != sizes["hidden"]:
        raise ValueError(f"{llm_dir}: hidden_size {llm_config.hidden_size} but speech_llama_proj gives {sizes['hidden']}")
    with init_empty_weights():   # parameters on meta, buffers (rotary) real: every weight comes from the file
        llm = AutoModelForCausalLM.from_config(llm_config)
    if not merge_lora:
        from peft import LoraConfig, TaskType, get_peft_model
        llm = get_peft_model(llm, LoraConfig(task_type=TaskType.CAUSAL_LM, inference_mode=True, r=rank,
                                             lora_alpha=sizes["lora_alpha"], lora_dropout=sizes["lora_dropout"],
                                             target_modules=list(LORA_TARGETS)), low_cpu_mem_usage=True)
    tokenizer = AutoTokenizer.from_pretrained(llm_dir)
    with torch.device("meta"):
        model = ReleasedC2SER(sizes, llm, tokenizer)
    expected, seen = {}, set()
    for k, v in model.state_dict(keep_vars=True).items():
        if id(v) not in seen:   # a tied head is the embedding: one tensor, loaded once
            seen.add(id(v))
            expected[k] = v
    target_re = re.compile(r"llama_model\.(.*\.(?:%s))\.weight$" % "|".join(LORA_TARGETS))

    def official(ours: str) -> str:
        """The release's name of one of our tensors (for error messages)."""
        if not ours.startswith("llama_model.") or not merge_lora:
            return ours
        m = target_re.match(ours)
        return LLM_PREFIX + PEFT_PREFIX + (m.group(1) + ".base_layer.weight" if m else ours[len("llama_model."):])

    # Aliases: the official module keeps references to the LLM's embedding and head (llmasr_model.py:139-140).
    emb_key = LLM_PREFIX + PEFT_PREFIX + "model.embed_tokens.weight"
    head_key = LLM_PREFIX + PEFT_PREFIX + "lm_head.weight"
    aliases = {"embed_tokens.weight": emb_key, "lm_head.weight": head_key}
    if getattr(llm_config, "tie_word_embeddings", False):
        aliases[head_key] = emb_key   # a tied head is saved under both names
    loaded, origin, leftover, lora = {}, {}, [], {}
    for key, tensor in state.items():
        if key in aliases:
            target = aliases[key]
            if target not in state or not torch.equal(state[target], tensor):
                raise ValueError(f"{source}: alias '{key}' differs from (or lacks) '{target}'")
            continue
        ours = key
        if key.startswith(LLM_PREFIX):
            name, role = _llm_key(key, merge_lora)
            ours = "llama_model." + name
            if role in ("lora_A", "lora_B"):
                entry = lora.setdefault(ours, {})
                if role in entry:
                    raise ValueError(f"{source}: '{key}' and '{entry[role]}' are the same LoRA matrix")
                entry[role] = key
                continue
        if ours not in expected:
            leftover.append(key)
        elif ours in loaded:
            raise ValueError(f"{source}: '{key}' and '{origin[ours]}' both load {ours}")
        else:
            loaded[ours], origin[ours] = tensor, key
    missing = [official(k) for k in expected if k not in loaded]
    for ours, pair in lora.items():   # merge_lora only: every target needs its base, A and B
        if ours not in expected or not target_re.match(ours):
            leftover.extend(pair.values())
    if merge_lora:
        for ours in expected:
            m = target_re.match(ours)
            for role in ("lora_A", "lora_B") if m else ():
                if role not in lora.get(ours, {}):
                    missing.append(f"{LLM_PREFIX}{PEFT_PREFIX}{m.group(1)}.{role}.default.weight")
    if leftover or missing:
        raise ValueError(f"{source}: checkpoint and model do not match; {len(leftover)} checkpoint keys unused: "
                         f"{_first(leftover) if leftover else '-'}; {len(missing)} model tensors missing: "
                         f"{_first(missing) if missing else '-'}")
    for ours, tensor in loaded.items():
        if tensor.shape != expected[ours].shape:
            raise ValueError(f"{source}: '{origin[ours]}' has shape {tuple(tensor.shape)}, the model wants "
                             f"{tuple(expected[ours].shape)}")
    for key, table in (("encoder.embed.pos_enc.pe", whisper_table), ("speech_transformer.embed.pos_enc.pe", espnet_table)):
        if not _near(loaded[key][0], table(*loaded[key].shape[1:])):
            raise ValueError(f"{source}: '{key}' is not the sinusoid table this layout implies")

    device, scaling = torch.device(device), sizes["lora_alpha"] / rank

    def prepared(ours: str) -> Tensor:
        """On ``device`` in its dtype; a merged target is W + (alpha/r)·B·A, summed in float32 there."""
        tensor = loaded[ours].to(device)
        if not ours.startswith("llama_model.") or ".lora_" in ours:
            return tensor.float()   # audio side, and the adapters (peft keeps them float32 by default)
        if ours in lora:
            a, b = (state[lora[ours][r]].to(device).float() for r in ("lora_A", "lora_B"))
            tensor = tensor.float() + scaling * (b @ a)
        return tensor.to(dtype)

    model.load_state_dict({k: prepared(k) for k in loaded}, strict=False, assign=True)
    model.mel_filters, model.window = model.mel_filters.to(device), model.window.to(device)
    model.llama_model.to(device)
    if getattr(llm_config, "tie_word_embeddings", False):
        model.llama_model.tie_weights()
    still_meta = [n for n, p in model.named_parameters() if p.is_meta] + [n for n, b in model.named_buffers() if b.is_meta]
    if still_meta:
        raise ValueError(f"{source}: tensors left unloaded: {_first(still_meta)}")
    if e2v is not None:
        model.e2v = _load_e2v(e2v).to(device).eval()
    model.requires_grad_(False).eval()
    model.load_summary = {"checkpoint_keys": len(state), "loaded": len(loaded), "llm": sum(k.startswith("llama_model.") for k in loaded),
                          "aliases": sorted(aliases), "lora_merged": bool(merge_lora), "lora_rank": rank}
    logger.info("C²SER release %s: %d keys -> %d tensors (%s)", source, len(state), len(loaded),
                "LoRA merged" if merge_lora else "LoRA unmerged")
    return model


def _load_e2v(e2v):
    """An ``Emotion2VecS`` from a path (the C²SER release is emotion2vec_base-sized) or as given."""
    from local.models.emotion2vec_s import Emotion2VecS, load_emotion2vec
    if isinstance(e2v, Emotion2VecS):
        return e2v
    path = Path(e2v)
    size = None if (path.is_dir() or (path.parent / "config.yaml").is_file()) else "base"
    model, report = load_emotion2vec(path, size=size)
    if report.missing:
        raise ValueError(f"{path}: Emotion2Vec-S weights missing: {_first(report.missing)}")
    return model
