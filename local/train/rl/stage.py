"""Stage 8: policy optimisation of the audio LLM — GRPO, GRPOz, SAPO, DR-SAPO and on-policy DPO.

Every algorithm is one ``step_fn`` for the shared trainer (local/train/loop.py), so checkpoints,
exact resume, DDP and the NaN guard are the ones every stage has.  A step takes a batch of
utterances, samples rollouts from the current policy (eval mode, KV-cached ``generate``), scores
them (their texts), and returns a loss from local/train/rl/losses.py on the token ids they were
sampled as (a re-tokenised text can differ, and a rollout cut at ``max_new_tokens`` has no EOS):

* ``grpo`` / ``sapo`` (ambiguity Eq. 7; CogAudio's SAPO): ``group_size`` rollouts per utterance,
  group-normalised advantages, the clipped (GRPO) or soft-gated (SAPO) ratio objective, an optional
  k3 KL to the reference.  One policy update per batch of rollouts, so old_logp is the current
  log-prob detached and the ratio is 1 in value (its gradient is the policy gradient); the clip or
  gate acts when ``updates_per_batch`` > 1 reuses the rollouts.
* ``grpoz``: as GRPO, with the gold trajectory (the stage-3 target) added to every group as one more
  member, scored by the same reward and normalised with the group.  It is off-policy; it is treated
  as if π_old had sampled it, i.e. its old log-prob is its current one detached: the ratio starts
  at 1 and its term is A_gold·∇log π(gold), a reward-weighted SFT term (ambiguity §3.3.2, "GRPOz").
* ``dr_sapo``: SAPO with CogAudio's dual-route reward: each utterance is asked with Prompt A (EIPS)
  or Prompt B (direct response), 1:1, seeded by (seed, step, utterance).
* ``dpo`` (ambiguity Eq. 4-5): ``group_size`` rollouts per utterance; the negative is the rollout
  whose read-out distribution is furthest from the soft label by JS (``worst``) or the first one
  beyond ``js_threshold``; the positive is the gold trajectory; loss = sigmoid DPO + λ_kl·KL(gold ‖
  read-out on the gold trajectory) + λ_ce·CE(gold).  An utterance with no negative is skipped.

The reference policy is the starting model.  Only the trainable tensors differ from it, so it is
kept as a copy of those (:class:`Reference`) and swapped in for the reference forward passes: a
LoRA model costs megabytes, not a second LLM.

Scores that cannot be had (a judge endpoint down, an unparsable verdict) drop their rollout; a group
left with fewer than two members is dropped; the counts are logged (``dropped``, ``skipped``).
"""
from __future__ import annotations

import contextlib
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from local.eval.judge import JudgeItem, normalise
from local.eval.metrics import js_divergence
from local.models.alm import AudioLLM, batch_speakers, load_alm, save_alm, trained_state
from local.utils.paths import rl_start_model
from local.models.readout import Readout, gold_distributions
from local.reasoning.targets import target_spec
from local.train.loop import Trainer
from local.train.rl.losses import STD_EPS, dpo_loss, group_advantages, kl_to_target, policy_loss, \
    policy_stats, sequence_logprobs
from local.train.rl.rewards import ROUTES, reward_spec
from local.utils.distributed import on_main_process
from local.data.labels import recipe_labels
from local.train.sft import (fit_feature_norm, instruction_for, select_rows, shard_loaders,
                             training_facts)

log = logging.getLogger(__name__)

ALGORITHMS = ("grpo", "grpoz", "sapo", "dr_sapo", "dpo")


class Reference:
    """The frozen starting policy, held as a copy of the model's trainable tensors.

    Swapping writes the weights in place, so run reference passes before the policy's forward of
    the same step (autograd refuses tensors modified after they were saved for backward)."""

    def __init__(self, model: torch.nn.Module):
        self.saved = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    @contextlib.contextmanager
    def active(self, model: torch.nn.Module):
        params = dict(model.named_parameters())
        current = {n: params[n].detach().clone() for n in self.saved}
        with torch.no_grad():
            for n, v in self.saved.items():
                params[n].copy_(v)
        try:
            yield
        finally:
            with torch.no_grad():
                for n, v in current.items():
                    params[n].copy_(v)


def token_logprobs(model, batch: Mapping, prompts: Sequence[str], responses: Sequence[str | Sequence[int]]
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log p of each response token [B, L-1], its mask [B, L-1], the mean CE of the batch); a response is a
    text (a gold target: its tokens and EOS) or the token ids a rollout sampled."""
    out = model({**batch, "prompts": list(prompts), "responses": list(responses)})
    labels = out.labels[:, 1:]
    return sequence_logprobs(out.logits[:, :-1], labels), labels >= 0, out.loss


def repeat_rows(batch: Mapping, n: int) -> dict:
    """Each utterance of the batch ``n`` times in a row (group after group)."""
    return select_rows(batch, [i for i in range(len(batch["utts"])) for _ in range(n)])


@torch.no_grad()
def sample(module: AudioLLM, batch: Mapping, prompts: Sequence[str], gen_kwargs: Mapping,
           ids: bool = False) -> list[str] | tuple[list[str], list[list[int]]]:
    """One rollout per row, sampled in eval mode (no dropout), the module's mode restored after: its text,
    and with ``ids`` its token ids (what the losses are computed on, not a re-tokenisation of the text)."""
    was_training = module.training
    module.eval()
    try:
        return module.generate(batch.get("wav"), batch.get("wav_lens"), list(prompts), feats=batch.get("feats"),
                               feat_lens=batch.get("feat_lens"), speakers=batch_speakers(batch), return_ids=ids,
                               **gen_kwargs)
    finally:
        module.train(was_training)


def gold_target(records: Sequence[Mapping], target_type: str) -> str | None:
    return next((r["target"] for r in records if r["type"] == target_type), None)


def advantages_of(rewards: Sequence[Sequence[float]], scale: str) -> list[float]:
    """Group-normalised advantages of groups that may differ in size (after dropped rollouts)."""
    if scale == "batch":
        flat = torch.tensor([r for group in rewards for r in group], dtype=torch.float64)
        centred = [group_advantages(torch.tensor(g, dtype=torch.float64), len(g), "none") for g in rewards]
        return (torch.cat(centred) / (flat.std() + STD_EPS)).tolist()
    return [a for g in rewards for a in group_advantages(torch.tensor(g, dtype=torch.float64), len(g), scale).tolist()]


class PolicyOptimisation:
    """The step and validation functions of one stage-8 run (see the module docstring)."""

    def __init__(self, cfg: DictConfig, stage: DictConfig, model: AudioLLM, judge=None):
        self.cfg, self.stage, self.judge = cfg, stage, judge
        self.algorithm, self.reward_kind = stage.algorithm, stage.reward.kind
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"rl.algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        self.reward = reward_spec(self.reward_kind)
        if (self.algorithm == "dr_sapo") != self.reward.dual_route:
            raise ValueError("dr_sapo is SAPO with a dual-route reward (dual_route): use the two together")
        if self.algorithm in ("grpoz", "dpo") and not self.reward.reads_distribution:
            raise ValueError(f"{self.algorithm} compares rollouts with the gold trajectory by distribution: "
                             "use a reward that reads it (rl.reward.kind=distribution)")
        if self.reward.needs_judge and judge is None:
            raise ValueError(f"the {self.reward_kind} reward needs a judge")
        for t in (stage.target, stage.get("route_b")):
            if t is not None:
                target_spec(t)
        if not model.facts.get("readout"):
            raise ValueError("stage 8 reads the class-name distribution, and the model it starts from was trained "
                             "without a read-out (sft.readout)")
        self.readout = Readout(model.tokenizer, **model.facts["readout"])
        self.facts = model.facts
        self.reference = Reference(model)
        self.gen_kwargs = {"do_sample": True, **OmegaConf.to_container(stage.sampling, resolve=True)}
        self.counts: Counter = Counter()
        self.trainer: Trainer | None = None

    # --- pieces ---------------------------------------------------------------------------

    @property
    def step(self) -> int:
        return self.trainer.step if self.trainer is not None else 0

    def routes(self, n: int) -> list[str]:
        """Prompt A or B per utterance (dual route), 1:1 and reproducible across a resume."""
        if not self.reward.dual_route:
            return ["A"] * n
        rng = np.random.default_rng([self.cfg.seed, self.step, 2])
        return [ROUTES[int(rng.integers(2))] for _ in range(n)]

    def prompts(self, routes: Sequence[str]) -> list[str]:
        rng = np.random.default_rng([self.cfg.seed, self.step, 1])
        types = {"A": self.stage.target, "B": self.stage.get("route_b")}
        return [instruction_for(types[r], rng, self.facts) for r in routes]

    def gold_dists(self, batch: Mapping) -> torch.Tensor:
        return gold_distributions(batch, self.readout.labels).float().cpu()

    def read(self, module: AudioLLM, batch: Mapping, prompts: Sequence[str], texts: Sequence[str],
             grad: bool = False) -> torch.Tensor:
        """Read-out log-probs [B, K].  Without grad (a reward, a score) in eval mode, so that a rollout's
        reward does not depend on a dropout draw; with grad (a loss term) in the caller's mode."""
        if grad:
            return self.readout.logprobs(module, batch, list(prompts), list(texts))
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                return self.readout.logprobs(module, batch, list(prompts), list(texts))
        finally:
            module.train(was_training)

    def rewards(self, module: AudioLLM, batch: Mapping, prompts, texts, gold: torch.Tensor, routes) -> list[float | None]:
        """The reward of each row of an expanded batch (``gold`` [N, K], ``routes`` [N])."""
        return self.reward.score(self, module, batch, prompts, texts, gold, routes)

    def judged(self, batch: Mapping, texts: Sequence[str], routes: Sequence[str]) -> list[dict[str, float] | None]:
        """The judge's scores in [0, 1]: empathy for every rollout, the EIPS steps for Prompt A's;
        None where a rubric could not be had (counted in judge.stats)."""
        items = [JudgeItem(utt=meta.get("utt", ""), output=text, label=meta.get("label") or "",
                           text=meta.get("text", "")) for meta, text in zip(batch["meta"], texts)]
        empathy = self.judge.score(items, "empathy")
        a_rows = [i for i, r in enumerate(routes) if r == "A"]
        steps = dict(zip(a_rows, self.judge.score([items[i] for i in a_rows], "eips"))) if a_rows else {}
        out = []
        for i, emp in enumerate(empathy):
            parts = [(emp, "empathy")] + ([(steps[i], "eips")] if i in steps else [])
            out.append(None if any(p is None for p, _ in parts)
                       else {k: v for p, rubric in parts for k, v in normalise(p, rubric).items()})
        return out

    # --- the losses -----------------------------------------------------------------------

    def step_fn(self, model, batch: Mapping) -> tuple[torch.Tensor, dict]:
        module = self.trainer.module if self.trainer is not None else model
        if self.algorithm == "dpo":
            return self.dpo_step(model, module, batch)
        return self.policy_step(model, module, batch)

    def policy_step(self, model, module: AudioLLM, batch: Mapping) -> tuple[torch.Tensor, dict]:
        g, n = int(self.stage.group_size), len(batch["utts"])
        routes = self.routes(n)
        prompts = self.prompts(routes)
        rep = repeat_rows(batch, g)
        rep_prompts, rep_routes = [p for p in prompts for _ in range(g)], [r for r in routes for _ in range(g)]
        texts, seqs = sample(module, rep, rep_prompts, self.gen_kwargs, ids=True)
        gold = self.gold_dists(batch)
        rows = list(range(n * g))  # into rep / texts / seqs
        groups = [list(range(i * g, (i + 1) * g)) for i in range(n)]
        if self.algorithm == "grpoz":  # the gold trajectory joins each group
            golds = [gold_target(t, self.stage.target) for t in batch["targets"]]
            keep = [i for i in range(n) if golds[i] is not None]
            self.counts["no_gold"] += n - len(keep)
            rep = select_rows(rep, rows + [i * g for i in keep])
            texts = texts + [golds[i] for i in keep]
            seqs = seqs + [golds[i] for i in keep]
            rep_prompts = rep_prompts + [prompts[i] for i in keep]
            rep_routes = rep_routes + [routes[i] for i in keep]
            groups = [groups[i] + [n * g + j] for j, i in enumerate(keep)]
            rows = list(range(len(texts)))
        owner = [i for i, members in enumerate(groups) for _ in members]
        rewards = self.rewards(module, rep, rep_prompts, texts, gold[[owner[r] for r in rows]], rep_routes)
        kept_groups, kept_rewards = [], []
        for members in groups:
            scored = [m for m in members if rewards[m] is not None]
            self.counts["dropped"] += len(members) - len(scored)
            if len(scored) >= 2:
                kept_groups.append(scored)
                kept_rewards.append([rewards[m] for m in scored])
            else:
                self.counts["skipped_groups"] += 1
        mean_reward = float(np.mean([r for r in rewards if r is not None])) if any(r is not None for r in rewards) \
            else float("nan")
        logs = {"reward": mean_reward, "dropped": float(self.counts["dropped"]),
                "skipped_groups": float(self.counts["skipped_groups"])}
        if not kept_groups:
            return sum(p.sum() * 0.0 for p in module.parameters() if p.requires_grad), logs
        keep = [m for members in kept_groups for m in members]
        adv = torch.tensor(advantages_of(kept_rewards, self.stage.loss.scale), dtype=torch.float32)
        sub = select_rows(rep, keep)
        sub_prompts, sub_seqs = [rep_prompts[m] for m in keep], [seqs[m] for m in keep]
        ref = None
        if self.stage.loss.beta:  # before the policy forward: swapping weights in place would void its graph
            with torch.no_grad(), self.reference.active(module):
                ref, _, _ = token_logprobs(module, sub, sub_prompts, sub_seqs)
        logp, mask, _ = token_logprobs(model, sub, sub_prompts, sub_seqs)
        old = logp.detach()
        kind = "grpo" if self.algorithm in ("grpo", "grpoz") else "sapo"
        opts = self.stage.loss
        adv = adv.to(logp.device)
        loss = policy_loss(logp, old, adv, mask, kind, opts.eps_low, opts.eps_high, opts.tau_pos, opts.tau_neg,
                           ref_logp=ref, beta=float(opts.beta))
        stats = policy_stats(logp.detach(), old, adv, mask, opts.eps_low, opts.eps_high, ref_logp=ref)
        return loss, {**logs, **stats, "rollout_tokens": float(mask.sum(-1).float().mean())}

    def dpo_step(self, model, module: AudioLLM, batch: Mapping) -> tuple[torch.Tensor, dict]:
        g, n, opts = int(self.stage.group_size), len(batch["utts"]), self.stage.dpo
        prompts = self.prompts(["A"] * n)
        rep = repeat_rows(batch, g)
        rep_prompts = [p for p in prompts for _ in range(g)]
        texts, seqs = sample(module, rep, rep_prompts, self.gen_kwargs, ids=True)
        gold = self.gold_dists(batch)
        pred = self.read(module, rep, rep_prompts, texts).exp().float().cpu().numpy()
        js = js_divergence(pred, gold.repeat_interleave(g, dim=0).numpy()).reshape(n, g)
        rows, chosen, rejected = [], [], []
        for i in range(n):
            gold_text = gold_target(batch["targets"][i], self.stage.target)
            if opts.negative == "worst":
                j = int(np.argmax(js[i]))
            else:
                beyond = np.flatnonzero(js[i] > float(opts.js_threshold))
                j = int(beyond[0]) if len(beyond) else None
            if gold_text is None or j is None:
                self.counts["skipped"] += 1
                continue
            rows.append(i)
            chosen.append(gold_text)
            rejected.append(seqs[i * g + j])
        logs = {"js_rollouts": float(js.mean()), "skipped": float(self.counts["skipped"])}
        if not rows:
            return sum(p.sum() * 0.0 for p in module.parameters() if p.requires_grad), logs
        sub = select_rows(batch, rows)
        sub_prompts = [prompts[i] for i in rows]
        pair = select_rows(sub, list(range(len(rows))) * 2)  # chosen rows, then rejected rows
        with torch.no_grad(), self.reference.active(module):  # first: the swap must not touch the policy's graph
            ref_logp, ref_mask, _ = token_logprobs(module, pair, sub_prompts * 2, chosen + rejected)
        ref_seq = (ref_logp * ref_mask).sum(-1)
        logp, mask, _ = token_logprobs(model, pair, sub_prompts * 2, chosen + rejected)
        seq = (logp * mask).sum(-1)
        k = len(rows)
        loss_dpo = dpo_loss(seq[:k], seq[k:], ref_seq[:k], ref_seq[k:], beta=float(opts.beta))
        ce = -(logp[:k] * mask[:k]).sum() / mask[:k].sum().clamp(min=1)
        loss = loss_dpo + float(opts.ce_weight) * ce
        logs.update(loss_dpo=float(loss_dpo.detach()), ce=float(ce.detach()),
                    margin=float(((seq[:k] - ref_seq[:k]) - (seq[k:] - ref_seq[k:])).detach().mean()))
        if opts.kl_weight:
            kl = kl_to_target(self.read(module, sub, sub_prompts, chosen, grad=True), gold[rows].to(seq.device))
            loss = loss + float(opts.kl_weight) * kl
            logs["kl"] = float(kl.detach())
        return loss, logs

    # --- validation: greedy outputs on the dev set, scored like the rollouts ------------------

    @torch.no_grad()
    def evaluate(self, model, loader) -> dict[str, float]:
        """Dev rewards in eval mode whoever calls (the trainer, or :func:`run` before and after it),
        so that the before/after numbers differ by the weights only."""
        module = self.trainer.module if self.trainer is not None else model
        was_training = module.training
        module.eval()
        try:
            return self._evaluate(module, loader)
        finally:
            module.train(was_training)

    def _evaluate(self, module: AudioLLM, loader) -> dict[str, float]:
        greedy = {k: v for k, v in self.gen_kwargs.items() if k not in ("temperature", "top_p")} | {"do_sample": False}
        rewards, js, per_route = [], [], {r: [] for r in ROUTES}
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(0)  # from the first batch, as the trainer's validations: valid_batches picks the same ones
        for b, batch in enumerate(loader):
            if self.stage.valid_batches is not None and b >= self.stage.valid_batches:
                break
            n = len(batch["utts"])
            routes = ["A" if (b + i) % 2 == 0 else "B" for i in range(n)] if self.reward.dual_route else ["A"] * n
            types = {"A": self.stage.target, "B": self.stage.get("route_b")}
            rng = np.random.default_rng([self.cfg.seed, b, 3])
            prompts = [instruction_for(types[r], rng, self.facts) for r in routes]
            texts = sample(module, batch, prompts, greedy)
            gold = self.gold_dists(batch)
            if self.reward.reads_distribution:  # the validation also reports the JS of the read-out
                pred = self.read(module, batch, prompts, texts).exp().float().cpu().numpy()
                js.extend(js_divergence(pred, gold.numpy()).tolist())
            values = self.rewards(module, batch, prompts, texts, gold, routes)
            for r, v in zip(routes, values):
                if v is not None:
                    rewards.append(v)
                    per_route[r].append(v)
        out = {"reward": float(np.mean(rewards)) if rewards else float("nan")}
        if js:
            out["js"] = float(np.mean(js))
        out.update({f"reward_{r}": float(np.mean(v)) for r, v in per_route.items() if v and self.reward.dual_route})
        return out


# --- what the stage runs ------------------------------------------------------------------

def run(cfg: DictConfig, judge=None, fingerprint: str | None = None) -> Path:
    """Train stage 8; return the saved model dir.  ``summary.json`` holds the dev reward before and after, for
    the run of this ``fingerprint`` (the stage's, local/bin/stages.py: its checkpoints are resumed only under it)."""
    stage = cfg.rl
    exp_dir = Path(stage.exp_dir)
    model = load_alm(rl_start_model(cfg))
    model.facts = training_facts(model, stage, [t for t in (stage.target, stage.get("route_b")) if t],
                                 recipe_labels(cfg.corpus))
    train, valid = shard_loaders(model, cfg, stage.batch_size)
    fit_feature_norm(model, cfg, stage)
    algo = PolicyOptimisation(cfg, stage, model, judge)
    trainer_cfg = OmegaConf.merge(cfg.trainer, stage.get("trainer") or {}, {"exp_dir": str(exp_dir)})
    trainer = Trainer(model, algo.step_fn, trainer_cfg, run_config=OmegaConf.to_container(cfg, resolve=True),
                      fingerprint=fingerprint)
    algo.trainer = trainer
    summary_path = exp_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    if summary.get("fingerprint") != trainer.fingerprint:  # another run's numbers
        summary = {"fingerprint": trainer.fingerprint}
    if "before" not in summary:
        summary["before"] = algo.evaluate(trainer.model, valid)
        exp_dir.mkdir(parents=True, exist_ok=True)
        summary_path.write_text(json.dumps(summary, indent=1))
    trainer.fit(train, valid, lambda m, loader: algo.evaluate(m, loader))
    summary["after"] = algo.evaluate(trainer.model, valid)
    # Counted in this process: a resumed run's earlier rollouts are not in them, and the summary says so.
    summary["counts"] = dict(algo.counts)
    summary["counted_steps"] = [trainer.start_step, trainer.step]
    if judge is not None and hasattr(judge, "stats"):
        summary["judge"] = dict(judge.stats)
    def write_summary():
        tmp = summary_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(summary, indent=1))
        tmp.replace(summary_path)
    on_main_process(write_summary)
    counted = ", ".join(f"{k} {v}" for k, v in sorted(algo.counts.items())) or "nothing dropped"
    if trainer.start_step:
        counted += f" in steps {trainer.start_step}-{trainer.step}: the run resumed at step {trainer.start_step}"
    log.info("dev reward %.4f -> %.4f (%s)", summary["before"]["reward"], summary["after"]["reward"], counted)
    state = trained_state(trainer.module)  # every rank: under FSDP this gathers the shards
    on_main_process(lambda: save_alm(trainer.module, exp_dir / "model", state))
    return exp_dir / "model"
