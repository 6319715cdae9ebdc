"""Parameters and peak training memory of a paper-size model, without a GPU and without its weights.

The model is built on the meta device (shapes and dtypes, no storage), so parameter counts and the bytes of
weights, gradients and AdamW states are exact.  Activations are *measured*, not guessed: a block's forward
runs on meta tensors under :func:`torch.autograd.graph.saved_tensors_hooks`, which sees every tensor autograd
keeps for the backward pass, and the bytes are summed.  With gradient checkpointing a stack of L blocks
keeps only each block's input, plus, during the backward pass, one block's recomputed activations; without
it, every block's.  The LM head (norm, vocabulary projection, soft-capping, the float32 loss) is measured by
running the LM with its blocks removed.  :func:`saved_bytes` on a real CPU model checks the composition
(tests/unit/test_footprint.py).

What it leaves out, and says so: the allocator's fragmentation and CUDA context (~1-3 GB on a real card),
frozen encoders' transient forward buffers (no grad: nothing is kept), and the gradient buffers of the
backward pass beyond the largest one (the logits' gradient).
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn

GB = 2**30


def saved_bytes(fn: Callable[[], object], exclude: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of the tensors autograd saves for backward while ``fn()`` runs (each storage once; the
    parameters in ``exclude``, saved by reference, are not activations)."""
    skip = {id(p) for p in exclude}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        base = t._base if t._base is not None else t
        if id(t) not in skip and id(base) not in skip and not isinstance(base, nn.Parameter):
            seen[id(base)] = max(seen.get(id(base), 0), base.numel() * base.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


@dataclass
class Part:
    """A trainable (or frozen) part of a model and what training it costs on one GPU."""

    name: str
    params: int
    trainable: int
    weight_bytes: int
    state_bytes: int          # gradients + AdamW's two moments, in the parameters' dtype
    activation_bytes: int     # kept for backward at once (with checkpointing: inputs + one block)


@dataclass
class Footprint:
    system: str
    batch: int                # utterances per GPU
    seq: int                  # LM tokens per utterance
    checkpointing: bool
    parts: list[Part] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def params(self) -> int:
        return sum(p.params for p in self.parts)

    @property
    def trainable(self) -> int:
        return sum(p.trainable for p in self.parts)

    @property
    def peak_bytes(self) -> int:
        return sum(p.weight_bytes + p.state_bytes + p.activation_bytes for p in self.parts)

    def as_dict(self) -> dict:
        return {**asdict(self), "params_total": self.params, "params_trainable": self.trainable,
                "peak_gb": self.peak_bytes / GB}


def part(name: str, module: nn.Module, activation_bytes: int = 0) -> Part:
    params = list(module.parameters())
    trainable = [p for p in params if p.requires_grad]
    return Part(name, sum(p.numel() for p in params), sum(p.numel() for p in trainable),
                sum(p.numel() * p.element_size() for p in params),
                sum(3 * p.numel() * p.element_size() for p in trainable), activation_bytes)


def stack_activation_bytes(block_bytes: int, input_bytes: int, n_blocks: int, checkpointing: bool) -> int:
    """Activations of ``n_blocks`` identical blocks: all of them, or with checkpointing each block's input
    plus one block recomputed in the backward pass."""
    if checkpointing:
        return n_blocks * input_bytes + block_bytes
    return n_blocks * block_bytes


def linear_activations(measure: Callable[[int], int], size: int, probe: int = 64) -> int:
    """``measure(n)`` (bytes kept at n tokens) at ``probe`` and 2 x ``probe``, extended to ``size``: for what
    is linear in its length, so that a paper-size batch is never run."""
    a, b = measure(probe), measure(2 * probe)
    return a + (b - a) * (size - probe) // probe


def causal_lm_activations(lm: nn.Module, batch: int, seq: int, checkpointing: bool, probe: int = 64) -> int:
    """Bytes kept for backward by a transformers causal LM (LoRA-wrapped or not, on any device, meta
    included) fed ``inputs_embeds`` [batch, seq, H] with labels on every position.

    One decoder block, and the head (the LM with its blocks removed), are copied to the CPU with
    uninitialised weights and measured on ``probe`` and 2 x ``probe`` tokens; their bytes are linear in the
    tokens (SDPA keeps O(tokens) for attention, as flash attention does on a GPU), so two points give them
    at ``batch`` x ``seq`` tokens.
    """
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    inner, cfg = base.model, base.config
    dtype = base.get_input_embeddings().weight.dtype
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    block = copy.deepcopy(inner.layers[0]).to_empty(device="cpu")
    head_lm = _only_head(lm, inner)

    def measured(tokens: int) -> tuple[int, int]:
        hidden = torch.zeros(1, tokens, cfg.hidden_size, dtype=dtype, requires_grad=True)
        positions = torch.arange(tokens)[None]
        rotary = tuple(torch.ones(1, tokens, head_dim, dtype=dtype) for _ in range(2))
        one = saved_bytes(lambda: block(hidden, attention_mask=None, position_ids=positions,
                                        position_embeddings=rotary), exclude=list(block.parameters()))
        labels = torch.zeros(1, tokens, dtype=torch.long)
        head = saved_bytes(lambda: head_lm(inputs_embeds=hidden, labels=labels, use_cache=False),
                           exclude=list(head_lm.parameters()))
        return one, head

    tokens = batch * seq
    one = linear_activations(lambda n: measured(n)[0], tokens, probe)
    head = linear_activations(lambda n: measured(n)[1], tokens, probe)
    block_input = tokens * cfg.hidden_size * torch.finfo(dtype).bits // 8
    # the loss's backward holds the logits' gradient (float32, as the loss upcasts) beside the saved logits
    logits_grad = tokens * cfg.vocab_size * 4
    return stack_activation_bytes(one, block_input, cfg.num_hidden_layers, checkpointing) + head + logits_grad


def _only_head(lm: nn.Module, inner: nn.Module) -> nn.Module:
    """A CPU copy of ``lm`` with no decoder blocks and uninitialised weights (what surrounds the blocks: the
    final norm, the vocabulary projection, the loss); the input embeddings are not copied (inputs_embeds)."""
    layers, embed = inner.layers, inner.embed_tokens
    inner.layers, inner.embed_tokens = nn.ModuleList(), nn.Embedding(1, 1, device="meta")
    try:
        head = copy.deepcopy(lm).to_empty(device="cpu")
    finally:
        inner.layers, inner.embed_tokens = layers, embed
    table = (head.get_base_model() if hasattr(head, "get_base_model") else head).model.rotary_emb
    inv_freq, _ = table.rope_init_fn(table.config, "cpu")  # its buffer was emptied too: made again
    table.inv_freq = inv_freq.to(table.inv_freq.dtype)
    table.original_inv_freq = table.inv_freq
    return head


def module_activations(module: nn.Module, *inputs: torch.Tensor) -> int:
    """Bytes kept for backward by one forward of ``module`` (no checkpointing)."""
    params = list(module.parameters())
    return saved_bytes(lambda: module(*inputs), exclude=params)


def format_table(footprints: list[Footprint]) -> str:
    """The README's table: one row per system and training phase."""
    lines = ["| system (phase) | params | trainable | batch / GPU x tokens | weights | grads + AdamW | "
             "activations | peak / GPU |", "|---|---|---|---|---|---|---|---|"]
    for f in footprints:
        w = sum(p.weight_bytes for p in f.parts) / GB
        s = sum(p.state_bytes for p in f.parts) / GB
        a = sum(p.activation_bytes for p in f.parts) / GB
        lines.append(f"| {f.system} | {f.params / 1e9:.2f} B | {f.trainable / 1e6:.1f} M | {f.batch} x {f.seq} | "
                     f"{w:.1f} GiB | {s:.1f} GiB | {a:.1f} GiB | **{f.peak_bytes / GB:.1f} GiB** |")
    return "\n".join(lines)
