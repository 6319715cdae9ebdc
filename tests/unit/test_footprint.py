"""The paper-size memory accounting (local/models/footprint.py) against measurements on real CPU tensors, and
the paper-size shapes of tests/bench/bench_paper_size.py against the parameter counts the papers state."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import Gemma2Config, Gemma2ForCausalLM, Qwen2Config, Qwen2ForCausalLM, WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from local.models.connectors import MLPAdapter
from local.models.footprint import Footprint, causal_lm_activations, linear_activations, part, saved_bytes

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_paper_size.py"
TINY = dict(vocab_size=500, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256)


def bench():
    spec = importlib.util.spec_from_file_location("bench_paper_size", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_saved_bytes_counts_activations_once_and_not_the_weights():
    lin = nn.Linear(10, 20)
    x = torch.randn(4, 10, requires_grad=True)
    # Linear keeps its input (4 x 10); tanh keeps its output (4 x 20); the weight is a parameter
    assert saved_bytes(lambda: torch.tanh(lin(x)), exclude=lin.parameters()) == (40 + 80) * 4
    assert saved_bytes(lambda: (x * x) * x) == 40 * 4 + 40 * 4  # x once (two saves), x*x once
    assert linear_activations(lambda n: 100 + 3 * n, 1000, probe=8) == 100 + 3 * 1000


def test_lm_activations_on_meta_equal_the_cpu_model_s_and_match_a_whole_forward():
    torch.manual_seed(0)
    lm = Qwen2ForCausalLM(Qwen2Config(**TINY)).train()
    with torch.device("meta"):
        meta = Qwen2ForCausalLM(Qwen2Config(**TINY))
    batch, seq = 2, 40
    est = causal_lm_activations(lm, batch, seq, checkpointing=False, probe=16)
    assert causal_lm_activations(meta, batch, seq, checkpointing=False, probe=16) == est
    x, y = torch.randn(batch, seq, 64, requires_grad=True), torch.randint(0, 500, (batch, seq))
    whole = saved_bytes(lambda: lm(inputs_embeds=x, labels=y, use_cache=False), exclude=lm.parameters())
    logits_grad = batch * seq * 500 * 4
    # what the estimate leaves out is the causal mask transformers builds for a whole forward (O(seq^2))
    assert whole * 0.9 < est - logits_grad <= whole
    # checkpointing keeps 3 block inputs and one recomputed block instead of 3 blocks: 2 blocks less, 3 inputs more
    ckpt = causal_lm_activations(lm, batch, seq, checkpointing=True, probe=16)
    inputs = 3 * batch * seq * 64 * 4
    one_block = (est - ckpt + inputs) / 2
    assert 0.2 * whole < one_block < 0.34 * whole and ckpt < est


def test_the_paper_size_shapes_have_the_parameter_counts_the_papers_state():
    b = bench()
    with torch.device("meta"):
        gemma = Gemma2ForCausalLM(Gemma2Config(**b.GEMMA2_9B))
        whisper = WhisperEncoder(WhisperConfig(**b.WHISPER_LARGE_V3))
    # audiollm_reasoning.txt §4: "Whisper-large has 637M parameters ... Gemma-2-9B-IT LLM has 9.24B"
    assert sum(p.numel() for p in gemma.parameters()) / 1e9 == pytest.approx(9.24, abs=0.005)
    assert sum(p.numel() for p in whisper.parameters()) / 1e6 == pytest.approx(637, abs=0.5)
    with torch.device("meta"):
        adapter = MLPAdapter(1024, 3584, num_tokens=10, in_frames=1500)  # the emotion adapter, s = 150
    # shared/reasoning_system.md B.2: "about 157 M" in its first Linear
    assert adapter.mlp_adapter[0].weight.numel() / 1e6 == pytest.approx(157.3, abs=0.1)


def test_a_footprint_adds_weights_states_and_activations():
    model = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 10).to(torch.bfloat16))
    model[1].requires_grad_(False)
    p = part("m", model, activation_bytes=1000)
    assert (p.params, p.trainable, p.weight_bytes, p.state_bytes) == (220, 110, 110 * 4 + 110 * 2, 3 * 110 * 4)
    f = Footprint("s", 1, 1, True, [p])
    assert f.peak_bytes == p.weight_bytes + p.state_bytes + 1000 and f.as_dict()["params_trainable"] == 110
