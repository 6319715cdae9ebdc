"""The model's emotion distribution, read from the class-name tokens after its reasoning (ambiguity §3.3.1).

The ambiguity paper "read[s] out token-level logits for emotion category names at the final step
and appl[ies] a softmax over these logits" rather than parsing the probabilities the model writes:
the readout is differentiable (it enters the CE + λ·KL loss of Eq. 3) and graded even when the
written answer is a single label.

The answer position.  A text (a generated rollout, or the gold reasoning teacher-forced) is cut at
the *last* occurrence of ``answer_prefix`` (what comes before it is kept), and ``answer_prefix`` is
appended; a text without it is kept whole.  The class names follow the prefix after ``separator``::

    [prompt | audio | reasoning + answer_prefix] separator + name

so with the ambiguity targets' ``...Step 3: Synthesis. ...\\nDistribution: anger:0.75 ...`` and the
default prefix ``"\\nDistribution:"`` the model is asked for the first label it would write.

Multi-token names.  A class scores the SUM of its sub-token log-probabilities, teacher-forced after
the prefix: log p(name) = Σ_j log p(t_j | context, t_<j).  The distribution is the softmax of these
scores over the candidate labels.  For single-token names this is the logit readout itself: the
vocabulary normaliser is common to all classes and cancels in the softmax.  There is no
end-of-name term, so a name that is a token-prefix of another scores at least as high; emotion
names are not.

Tokenisation.  A name's tokens are those that ``answer_prefix + separator + name`` has beyond the
tokens of ``answer_prefix`` alone.  When BPE merges across that boundary (a prefix ending in a
space, with the space in front of the word in the vocabulary) the prefix tokens are not a prefix of
the joint ones, the name cannot be separated, and the constructor says so, naming the label.  The
context is tokenised as one string (reasoning + prefix), as the target is in SFT.

Cost: one forward over the batch's [prompt, audio, context]; when some name has more than one
token, one more forward of the multi-token classes' continuations (B × C' rows of the longest name
minus one token) on the first forward's KV cache, repeated per class.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from local.data.labels import EMOTIONS
from local.models.alm import IGNORE_INDEX

DEFAULT_PREFIX = "\nDistribution:"


class Readout:
    """The class-name distribution of an :class:`~local.models.alm.AudioLLM` after a text (see the module doc)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, answer_prefix: str = DEFAULT_PREFIX,
                 labels: Sequence[str] | None = None, separator: str = " "):
        self.labels = tuple(labels) if labels else EMOTIONS
        if not answer_prefix:
            raise ValueError("readout.answer_prefix is empty: the answer position needs a prefix to find and append")
        if len(set(self.labels)) != len(self.labels) or not all(self.labels):
            raise ValueError(f"readout.labels must be distinct non-empty names, got {list(self.labels)}")
        self.answer_prefix, self.separator = answer_prefix, separator
        prefix = tokenizer(answer_prefix, add_special_tokens=False).input_ids
        self.name_ids: list[list[int]] = []
        for label in self.labels:
            joint = tokenizer(answer_prefix + separator + label, add_special_tokens=False).input_ids
            if joint[:len(prefix)] != prefix or len(joint) == len(prefix):
                raise ValueError(
                    f"readout label {label!r} cannot be separated from the answer prefix: the tokens of "
                    f"{answer_prefix!r} {prefix} are not followed by the name's own in those of "
                    f"{answer_prefix + separator + label!r} {joint} (BPE merges across the boundary; "
                    f"put trailing whitespace of the prefix into readout.separator)")
            self.name_ids.append(joint[len(prefix):])

    def context(self, text: str) -> str:
        """``text`` cut at the last ``answer_prefix`` (kept whole without one), then the prefix appended."""
        k = text.rfind(self.answer_prefix)
        return (text[:k] if k >= 0 else text) + self.answer_prefix

    def scores(self, model, batch: Mapping, prompts: Sequence[str], texts: Sequence[str]) -> torch.Tensor:
        """log p(separator + name | prompt, audio, context) of each label: [B, C] float32, differentiable."""
        if len(prompts) != len(texts):
            raise ValueError(f"{len(prompts)} prompts but {len(texts)} texts")
        lm = model.lm
        audio = model.audio_tokens({**batch, "prompts": list(prompts)})
        # assemble() ends every response with eos: the context is what comes before it
        embeds, mask, labels = model.assemble(prompts, audio, [self.context(t) for t in texts])
        positions = torch.arange(labels.shape[1], device=labels.device)
        eos = torch.where(labels != IGNORE_INDEX, positions, -1).amax(-1)  # = length of the context
        rows = torch.arange(len(eos), device=eos.device)
        mask = mask.clone()
        mask[rows, eos] = 0
        multi = [c for c, ids in enumerate(self.name_ids) if len(ids) > 1]
        # logits at the answer position only: a [B, L, V] float32 copy would be GiBs at 150k words
        keep, where = torch.unique(eos - 1, return_inverse=True)
        out = lm(inputs_embeds=embeds, attention_mask=mask, use_cache=bool(multi), logits_to_keep=keep)
        first = out.logits[rows, where].float().log_softmax(-1)  # [B, V]
        scores = first[:, [ids[0] for ids in self.name_ids]]
        if not multi:
            return scores

        # the rest of each multi-token name, teacher-forced on the context's KV cache repeated per class
        cache = out.past_key_values
        if cache is None:
            raise RuntimeError("the LM returned no KV cache (use_cache is off, e.g. gradient checkpointing): "
                               "set model.llm.gradient_checkpointing=false for a read-out of multi-token names")
        n_multi, width, dev = len(multi), max(len(self.name_ids[c]) for c in multi) - 1, embeds.device
        pad = model.tokenizer.pad_token_id or 0
        padded = torch.tensor([self.name_ids[c] + [pad] * (width + 1 - len(self.name_ids[c])) for c in multi],
                              device=dev)
        inputs, targets = padded[:, :-1], padded[:, 1:]
        valid = torch.arange(width, device=dev) < torch.tensor([len(self.name_ids[c]) - 1 for c in multi],
                                                               device=dev)[:, None]
        cache.batch_repeat_interleave(n_multi)  # row b * n_multi + k: utterance b, class multi[k]
        b = len(eos)
        out = lm(inputs_embeds=lm.get_input_embeddings()(inputs.repeat(b, 1)),
                 attention_mask=torch.cat([mask.repeat_interleave(n_multi, 0), valid.long().repeat(b, 1)], 1),
                 position_ids=eos.repeat_interleave(n_multi)[:, None] + torch.arange(width, device=eos.device),
                 past_key_values=cache, use_cache=True)
        rest = out.logits.float().log_softmax(-1).gather(-1, targets.repeat(b, 1)[..., None])[..., 0]
        rest = (rest * valid.repeat(b, 1)).sum(-1).view(b, n_multi)
        return scores.index_add(1, torch.tensor(multi, device=scores.device), rest)

    def logprobs(self, model, batch: Mapping, prompts: Sequence[str], texts: Sequence[str]) -> torch.Tensor:
        """log p_model over the labels [B, C]: the log-softmax of :meth:`scores` across the candidates."""
        return self.scores(model, batch, prompts, texts).log_softmax(-1)

    def distributions(self, model, batch: Mapping, prompts: Sequence[str], texts: Sequence[str]
                      ) -> list[dict[str, float]]:
        """The read-out of each text as {label: p}, without autograd (decoding, scoring)."""
        with torch.no_grad():
            p = self.logprobs(model, batch, prompts, texts).exp().cpu().numpy()
        return [dict(zip(self.labels, map(float, row))) for row in p]


def gold_distributions(batch: Mapping, labels: Sequence[str]) -> torch.Tensor:
    """Soft labels [B, C] over ``labels`` (float32): the utterance's utt2dist (meta "dist"), else its hard
    label, renormalised over the candidates (a corpus with classes outside the read-out's keeps the rest)."""
    rows = []
    for utt, meta in zip(batch["utts"], batch["meta"]):
        dist = meta.get("dist") or ({meta["label"]: 1.0} if meta.get("label") else None)
        if not dist:
            raise ValueError(f"{utt}: neither a soft label (utt2dist) nor a label (utt2emo) to aim the read-out at")
        row = np.array([float(dist.get(label, 0.0)) for label in labels])
        if row.sum() <= 0:
            raise ValueError(f"{utt}: soft label {dist} puts no mass on the read-out labels {list(labels)}")
        rows.append(row / row.sum())
    return torch.tensor(np.stack(rows), dtype=torch.float32)
