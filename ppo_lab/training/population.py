"""A population: ``M`` PPO runs of one architecture trained in lockstep, with one batched update.

This is the one training loop. A solo run (``python train.py``) is a population of one
(``Trainer.fit``); a population sweep (``hydra/launcher=population``) gives it many members.
Each member is a :class:`~ppo_lab.training.trainer.Trainer`: its own env, rollout collector,
normalization, minibatch generator, counters, sinks, callbacks, run dir and checkpoints. Each
round, every running member anneals its schedules and, after the rollouts, computes its
advantages (phases 1 and 3 of ``Trainer``); the rollouts run in lockstep with one batched
forward per step (phase 2, :meth:`Population.collect`); one update trains all of them (phase 4,
:meth:`Population.update`); then each member logs, evaluates and checkpoints (phases 5-6).

The update runs the members' minibatches side by side:

* parameters, gradients and Adam moments are rows of one ``(M, P)`` buffer
  (``algo.optim.StackedAdam``); each member's network reads its row, so rollouts and
  checkpoints are unchanged;
* members of the project's MLP actor-critic run as batched layers
  (``policies.stacked.StackedActorCritic``); a population of one runs its network's own forward
  (the reference, and any network: CNN, Dict extractor, recurrent core, a user's);
* each member draws its minibatch order from its own generator (what its solo run draws), and
  shorter minibatches are padded and weighted out of every loss term (``algo.losses``);
* ``learning_rate``, ``clip_coef``, ``ent_coef``, ``vf_coef``, ``max_grad_norm``, ``target_kl``
  and the KL-penalty ``kl_beta`` act per member (one value for all when they agree); a member
  past its ``target_kl`` stops stepping for the rest of the update, and one whose loss or
  parameters go non-finite fails alone (:class:`TrainingDiverged`) while the others continue.

So member ``m`` of a population computes what its solo run computes, up to float32 rounding
(``tests/test_population.py``). Design notes and measurements: ``docs/population.md``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor
from tqdm import tqdm

from ppo_lab.algo.loss_grads import ppo_clip_losses_and_grads
from ppo_lab.algo.losses import explained_variance, ppo_losses, total_loss, update_kl_beta
from ppo_lab.algo.optim import StackedAdam
from ppo_lab.config import LossType
from ppo_lab.envs.normalization import share_normalization
from ppo_lab.policies.observations import map_obs
from ppo_lab.policies.protocol import is_recurrent
from ppo_lab.policies.stacked import StackedActorCritic, architecture_difference, stack_refusal
from ppo_lab.training.errors import TrainingInterrupted
from ppo_lab.training.rollout import Minibatch, TrainingBatch, collect_rollouts
from ppo_lab.training.runtime import retain_freed_memory

#: A member: a ``ppo_lab.training.trainer.Trainer`` (not imported: the trainer imports this module).
Trainer = Any
#: A member's phases 1-3 (``ppo_lab.training.trainer.Rollout``).
Rollout = Any

LOG = logging.getLogger("ppo_lab")

#: Per-minibatch statistics averaged over an update and logged as ``train/<key>``.
STAT_KEYS = ("policy_loss", "value_loss", "entropy", "approx_kl", "old_approx_kl", "clipfrac",
             "loss", "grad_norm")

#: The config keys that must agree inside a population (besides the network's architecture).
SHARED_KEYS = ("num_envs", "num_steps", "num_minibatches", "update_epochs", "loss", "clip_vloss", "norm_adv",
               "adam_eps")

Outcome = Union[dict[str, float], BaseException]


def population_refusal(members: Sequence[Trainer]) -> Optional[str]:
    """Why these members cannot train as one population (None when they can): the keys of
    :data:`SHARED_KEYS` differ, or there are several and a network cannot be stacked or their
    architectures differ (``policies.stacked.architecture_difference``)."""
    for key in SHARED_KEYS:
        values = {str(getattr(m.cfg.agent, key)) for m in members}
        if len(values) > 1:
            return f"agent.{key} differs between members ({', '.join(sorted(values))})"
    if len({m.device for m in members}) > 1:
        return "members are on different devices"
    if len(members) > 1:
        for m in members:
            reason = stack_refusal(m.network)
            if reason:
                return reason
        return architecture_difference([m.network for m in members])
    return None


def numpy_update_refusal(members: Sequence[Trainer], stacked: Optional[StackedActorCritic]) -> Optional[str]:
    """Why a population's update takes autograd instead of the numpy fast path (None when it can
    take it): the fast path serves populations of several stacked members trained with the
    PPO-clip loss, without action masks, on networks ``StackedActorCritic.numpy_refusal`` accepts.
    A population of one always takes its network's own autograd forward (the reference)."""
    if stacked is None:
        return "a population of one trains with its network's own forward"
    a = members[0].cfg.agent
    if a.loss is not LossType.clip:
        return f"agent.loss={a.loss.value} (the fast path has the PPO-clip loss only)"
    if any(m.collector.buffer.masks is not None for m in members):
        return "action masks"
    return stacked.numpy_refusal()


def uniform(values: Sequence[float]) -> Union[float, list[float]]:
    """One float when every member has the same value (the scalar path), else the list."""
    return float(values[0]) if all(v == values[0] for v in values) else [float(v) for v in values]


def as_rows(values: Union[float, list[float]], device: torch.device) -> Union[float, Tensor]:
    """A float, or an ``(M,)`` float32 tensor of per-member values."""
    return values if isinstance(values, float) else torch.tensor(values, dtype=torch.float32, device=device)


def stack_rows(tensors: Sequence[Tensor]) -> Tensor:
    """``(M, ...)`` from ``M`` tensors of one shape (a view for one)."""
    return tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(list(tensors))


class Population:
    """Members trained in lockstep (module docstring).

    Args:
        members: the members' trainers (built as solo runs: ``Trainer``), all with the keys of
            :data:`SHARED_KEYS` alike and, when there are several, networks
            :func:`~ppo_lab.policies.stacked.stack_refusal` accepts.

    Raises:
        ValueError: the members cannot train together (the message says why).
    """

    def __init__(self, members: Sequence[Trainer]) -> None:
        self.members = list(members)
        if not self.members:
            raise ValueError("a population needs at least one member")
        reason = population_refusal(self.members)
        if reason:
            raise ValueError(f"these runs cannot train as one population: {reason}")
        self.device = self.members[0].device
        self.optimizer = StackedAdam([m.optimizer for m in self.members])
        self.stacked = (StackedActorCritic([m.network for m in self.members], self.optimizer.flat,
                                           self.optimizer.flat_grad) if len(self.members) > 1 else None)
        #: Why the update takes autograd rather than the numpy fast path (None: the fast path).
        self.numpy_refusal = numpy_update_refusal(self.members, self.stacked)
        if self.stacked is not None:
            # The batched arrays are ~M times a solo run's: past glibc's mmap threshold, each
            # would be page-faulted in afresh on every minibatch step.
            retain_freed_memory()
        self.recurrent = is_recurrent(self.members[0].network)
        # The members' observation/reward normalization in one store: normalized together.
        self.shared_normalization = share_normalization([m.envs for m in self.members]) is not None
        for member in self.members:
            member.population = self
        self._stop_signal: Optional[int] = None
        #: The member whose phase runs now (log routing: ``commands/population.member_logs``).
        self.current: Optional[Trainer] = None
        self._last: list[Optional[TrainingBatch]] = [None] * len(self.members)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> list[Outcome]:
        """Train every member to its ``total_timesteps`` (or its callback's stop); one outcome per
        member, in order: its final metrics (``Trainer.fit``'s) or the exception that ended it.

        Raises:
            TrainingInterrupted: SIGTERM/SIGINT; every running member saved a checkpoint first.
        """
        members = self.members
        outcomes: list[Optional[Outcome]] = [None] * len(members)
        total = sum(m.num_iterations * m.cfg.agent.batch_size for m in members)
        bar = tqdm(total=total, initial=sum(m.global_step for m in members), unit="step",
                   disable=not all(m.cfg.progress for m in members), dynamic_ncols=True, mininterval=1.0)
        # Signal handlers can only be installed from the main thread (not, e.g., a Ray actor's).
        in_main = threading.current_thread() is threading.main_thread()
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)} if in_main else {}
        try:
            for i, member in enumerate(members):
                self._guard(outcomes, i, member.begin)
            while True:
                rows = [i for i, m in enumerate(members) if outcomes[i] is None and m.running()]
                if not rows:
                    break
                # Phases 1-3: schedules, the rollouts in lockstep, advantages.
                rollouts = self.collect(rows, outcomes)
                # Phase 4: one update for all of them.
                tic = time.perf_counter()
                stats = self.update(rollouts) if rollouts else {}
                share = (time.perf_counter() - tic) / max(len(rollouts), 1)
                # Phases 5-6 per member: log, callbacks, evaluate, checkpoint.
                for i, result in stats.items():
                    if isinstance(result, BaseException):
                        outcomes[i] = result
                        continue
                    members[i].timing["update"] += share
                    self._guard(outcomes, i, members[i].after_update, result, rollouts[i])
                    bar.update(members[i].cfg.agent.batch_size)
                if len(members) == 1 and members[0].recent_returns:
                    bar.set_postfix(sps=f"{members[0].sps:,.0f}", ret=members[0].recent_return(), refresh=False)
                if self._stop_signal is not None:
                    self._interrupt(outcomes)
            for i, member in enumerate(members):
                if outcomes[i] is None:
                    final = self._guard(outcomes, i, member.finish)
                    if outcomes[i] is None:  # finish raised: _guard kept its exception
                        outcomes[i] = final
            return [o if o is not None else RuntimeError("member ended without an outcome") for o in outcomes]
        finally:
            bar.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _guard(self, outcomes: list[Optional[Outcome]], i: int, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` as member ``i``; an exception ends that member alone (it becomes its outcome)."""
        self.current = self.members[i]
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - a member's failure is its own outcome
            outcomes[i] = exc
            return None
        finally:
            self.current = None

    # ------------------------------------------------------------------ the rollouts
    def collect(self, rows: Sequence[int], outcomes: Optional[list[Optional[Outcome]]] = None) -> dict[int, Rollout]:
        """Phases 1-3 for the members ``rows``: each one's schedules (``Trainer.schedule``), their
        rollouts in lockstep (``training/rollout.collect_rollouts``: one batched forward per step
        where the policies stack), each one's advantages (``Trainer.advantages``).

        Returns:
            Member index -> its :class:`~ppo_lab.training.trainer.Rollout`. A member whose
            phase raised is left out, its exception in ``outcomes[i]`` (raised when
            ``outcomes`` is None).
        """
        members = self.members
        failed: list[Optional[Outcome]] = [None] * len(members) if outcomes is None else outcomes
        plans = {i: plan for i in rows if (plan := self._guard(failed, i, members[i].schedule)) is not None}
        live = list(plans)
        tic = time.perf_counter()
        results = collect_rollouts([members[i].collector for i in live], [members[i].network for i in live])
        share = (time.perf_counter() - tic) / max(len(live), 1)
        rollouts: dict[int, Rollout] = {}
        for i, result in zip(live, results):
            members[i].timing["rollout"] += share
            if isinstance(result, BaseException):
                failed[i] = result
                continue
            rollout = self._guard(failed, i, members[i].advantages, result, *plans[i])
            if rollout is not None:
                rollouts[i] = rollout
        if outcomes is None:
            for outcome in failed:
                if isinstance(outcome, BaseException):
                    raise outcome
        return rollouts

    # ------------------------------------------------------------------ the update
    def update(self, rollouts: dict[int, Rollout]) -> dict[int, Union[dict[str, float], BaseException]]:
        """Phase 4 for the members in ``rollouts`` (member index -> its rollout): ``update_epochs``
        passes of ``num_minibatches`` shuffled minibatches over each member's valid steps, all
        members side by side. Early stop per member: after an epoch whose mean approx_kl exceeds
        its ``target_kl``, it steps no more in this update.

        Returns:
            Per member: its ``train/`` statistics, or :class:`TrainingDiverged` (non-finite loss
            or parameters; its last checkpoint is intact).
        """
        members, device = self.members, self.device
        a = members[0].cfg.agent
        batches = []
        for i, member in enumerate(members):
            if i in rollouts:
                r = rollouts[i]
                self._last[i] = r.buf.training_batch(r.advantages, r.returns, device)
            batches.append(self._last[i])
        filler = next(b for b in batches if b is not None)
        batches = [b if b is not None else filler for b in batches]
        stacked = None if self.recurrent else self._stack(batches)

        # Per-member hyperparameters: one float when the members agree.
        clip = as_rows(uniform([rollouts[i].clip_coef if i in rollouts else m.cfg.agent.clip_coef
                                for i, m in enumerate(members)]), device)
        ent_coef = as_rows(uniform([m.cfg.agent.ent_coef for m in members]), device)
        vf_coef = as_rows(uniform([m.cfg.agent.vf_coef for m in members]), device)
        max_grad_norm = uniform([m.cfg.agent.max_grad_norm for m in members])
        kl_beta = as_rows(uniform([m.kl_beta for m in members]), device) if a.loss is LossType.kl_penalty else None
        target_kl = [m.cfg.agent.target_kl for m in members]

        active = [i in rollouts for i in range(len(members))]
        stat_rows: list[Tensor] = []
        stepped: list[list[bool]] = []
        epochs_run = [0] * len(members)
        last_kl = [0.0] * len(members)
        kl_column = STAT_KEYS.index("approx_kl")
        for epoch in range(a.update_epochs):
            epoch_start = len(stat_rows)
            for mb, steps in self._minibatches(batches, stacked, active, a.num_minibatches):
                if self.numpy_refusal is None:
                    terms = self._numpy_step(mb, clip, ent_coef, vf_coef)
                    loss = terms["loss"]
                else:
                    logp, entropy, value = self._evaluate(mb)
                    terms = ppo_losses(logp, mb.logprobs, mb.advantages, value, mb.values, mb.returns, entropy,
                                       clip, a.clip_vloss, a.norm_adv, kl_beta, weights=mb.weights)
                    loss = total_loss(terms, ent_coef, vf_coef)
                    self.optimizer.zero_grad()
                    loss.sum().backward()  # rows are independent: row m's gradient is member m's
                # Detail 11: global gradient clipping, per member.
                grad_norm = self.optimizer.clip_grad_norm_(max_grad_norm)
                self.optimizer.step(None if all(steps) else steps)
                for i, member in enumerate(members):
                    if steps[i]:
                        member.network.after_optimizer_step()
                terms["loss"], terms["grad_norm"] = loss, grad_norm
                stat_rows.append(torch.stack([terms[k] for k in STAT_KEYS]).detach())  # (keys, M)
                stepped.append(steps)
            if len(stat_rows) == epoch_start:
                break
            epoch_rows = torch.stack(stat_rows[epoch_start:])[:, kl_column]
            epoch_took = torch.tensor(stepped[epoch_start:], device=epoch_rows.device)
            epoch_kl = (torch.where(epoch_took, epoch_rows, 0.0).sum(0) / epoch_took.sum(0).clamp(min=1)).tolist()
            for i in range(len(members)):
                if active[i]:
                    epochs_run[i], last_kl[i] = epoch + 1, epoch_kl[i]
                    if target_kl[i] is not None and epoch_kl[i] > target_kl[i]:
                        active[i] = False
            if not any(active):
                break

        rows = torch.stack(stat_rows)  # (minibatches, keys, M)
        took = torch.tensor(stepped, device=rows.device).unsqueeze(1)  # (minibatches, 1, M)
        means = (torch.where(took, rows, 0.0).sum(0) / took.sum(0).clamp(min=1)).T.tolist()
        out: dict[int, Union[dict[str, float], BaseException]] = {}
        for i in rollouts:
            member, batch = members[i], batches[i]
            stats = dict(zip(STAT_KEYS, means[i]))
            try:
                member.check_finite(stats)
            except Exception as exc:  # noqa: BLE001 - a diverged member fails alone
                out[i] = exc
                continue
            stats["epochs"] = epochs_run[i]
            stats["explained_variance"] = explained_variance(batch.values[batch.valid], batch.returns[batch.valid])
            if kl_beta is not None:
                member.kl_beta = update_kl_beta(member.kl_beta, last_kl[i], member.cfg.agent.kl_target)
                stats["kl_beta"] = member.kl_beta
            stats.update(member.network.policy_stats())
            out[i] = stats
        return out

    @staticmethod
    def _stack(batches: Sequence[TrainingBatch]) -> dict[str, Any]:
        """The members' training batches as ``(M, T * N, ...)`` tensors (one copy per update)."""
        obs = [b.obs for b in batches]
        stacked = {"obs": map_obs(lambda t: t.unsqueeze(0), obs[0]) if len(obs) == 1 else stack_rows(obs)}
        for key in ("actions", "logprobs", "advantages", "values", "returns"):
            stacked[key] = stack_rows([getattr(b, key) for b in batches])
        stacked["masks"] = None if batches[0].masks is None else stack_rows([b.masks for b in batches])
        return stacked

    def _minibatches(self, batches: Sequence[TrainingBatch], stacked: Optional[dict[str, Any]],
                     active: list[bool], num_minibatches: int) -> list[tuple[Minibatch, list[bool]]]:
        """One epoch's minibatches, every field ``(M, S, ...)``, each with the members that step
        on it (the active ones that have a ``j``-th part).

        Each active member draws its order from its own generator (``TrainingBatch.minibatch_indices``);
        minibatch ``j`` pads each member's ``j``-th part to the longest (weight 0). Inactive
        members draw nothing (their generator stays where their solo run's would be) and get
        any rows: they do not step. Recurrent populations (one member) replay whole sequences
        (``TrainingBatch.sequence_minibatches``).
        """
        members = self.members
        if stacked is None:  # recurrent: one member
            batch, generator = batches[0], members[0].generator
            out = []
            for mb in batch.sequence_minibatches(num_minibatches, generator):
                for key in ("logprobs", "advantages", "values", "returns"):
                    setattr(mb, key, getattr(mb, key).unsqueeze(0))
                out.append((mb, [True]))
            return out
        parts = [b.minibatch_indices(num_minibatches, m.generator) if on else None
                 for b, m, on in zip(batches, members, active)]
        count = max(len(p) for p in parts if p is not None)
        sizes = [max(len(p[j]) for p in parts if p is not None and j < len(p)) for j in range(count)]
        exact = all(p is not None and [len(x) for x in p] == sizes for p in parts)
        device = stacked["actions"].device
        if exact:
            index, weights = stack_rows([torch.cat(p) for p in parts]), None
        else:
            index = torch.zeros(len(parts), sum(sizes), dtype=torch.long, device=device)
            weights = torch.zeros(len(parts), sum(sizes), device=device)
            for i, p in enumerate(parts):
                if p is None:  # not stepping: any rows, weighted as samples (finite terms)
                    weights[i] = 1.0
                    continue
                start = 0
                for j, size in enumerate(sizes):
                    if j < len(p):
                        index[i, start:start + len(p[j])] = p[j]
                        index[i, start + len(p[j]):start + size] = p[j][0]
                        weights[i, start:start + len(p[j])] = 1.0
                    else:  # fewer valid steps than minibatches: no part here, does not step
                        weights[i, start:start + size] = 1.0
                    start += size
        row = torch.arange(len(parts), device=device).unsqueeze(1)

        def take(t: Tensor) -> list[Tensor]:
            # One gather per tensor per epoch; the minibatches are then views. (One member: a
            # 1-D index, cheaper than the 2-D one.)
            rows = t[0][index[0]].unsqueeze(0) if len(parts) == 1 else t[row, index]
            return list(rows.split(sizes, dim=1))

        fields = {k: take(stacked[k]) for k in ("actions", "logprobs", "advantages", "values", "returns")}
        obs = stacked["obs"]
        obs_parts = ({k: take(v) for k, v in obs.items()} if isinstance(obs, dict) else take(obs))
        masks = None if stacked["masks"] is None else take(stacked["masks"])
        w = None if weights is None else weights.split(sizes, dim=1)
        return [(Minibatch(obs={k: v[j] for k, v in obs_parts.items()} if isinstance(obs_parts, dict) else obs_parts[j],
                           **{k: v[j] for k, v in fields.items()},
                           masks=None if masks is None else masks[j], weights=None if w is None else w[j]),
                 [p is not None and j < len(p) for p in parts])
                for j in range(len(sizes))]

    def _numpy_step(self, mb: Minibatch, clip: Union[float, Tensor], ent_coef: Union[float, Tensor],
                    vf_coef: Union[float, Tensor]) -> dict[str, Tensor]:
        """The fast path of one minibatch step (every member's gradient written, no autograd):
        the stacked networks' numpy forward and backward around the PPO-clip loss's closed-form
        gradient (``algo/loss_grads.py``). Returns the loss terms (and ``loss``) as ``(M,)`` tensors."""
        a = self.members[0].cfg.agent
        coef = lambda c: c.numpy() if isinstance(c, Tensor) else c  # noqa: E731
        weights = None if mb.weights is None else mb.weights.numpy()
        old_logp, advantages, old_value, returns = (mb.logprobs.numpy(), mb.advantages.numpy(),
                                                    mb.values.numpy(), mb.returns.numpy())

        def loss(logp: Any, entropy: Any, value: Any) -> Any:
            return ppo_clip_losses_and_grads(logp, old_logp, advantages, value, old_value, returns, entropy,
                                             coef(clip), coef(ent_coef), coef(vf_coef), a.clip_vloss, a.norm_adv,
                                             weights)

        assert self.stacked is not None
        terms = self.stacked.loss_and_backward(mb.obs, mb.actions, loss)
        return {k: torch.from_numpy(v) for k, v in terms.items()}

    def _evaluate(self, mb: Minibatch) -> tuple[Tensor, Tensor, Tensor]:
        """Log-probs, entropies and values ``(M, S)`` of the minibatch's stored actions: the
        batched layers for several members, the network's own ``evaluate_actions`` for one."""
        if self.stacked is not None:
            return self.stacked.evaluate_actions(mb.obs, mb.actions, mb.masks)
        network = self.members[0].network
        if self.recurrent:
            kwargs: dict[str, Any] = {} if mb.masks is None else {"mask": mb.masks}
            scores = network.evaluate_actions(mb.obs, mb.actions, state=mb.state,
                                              episode_start=mb.episode_starts, **kwargs)
            return tuple(x[mb.select].unsqueeze(0) for x in scores)  # type: ignore[return-value]
        # Keyword arguments only where needed: a user's feed-forward network may take neither.
        kwargs = {} if mb.masks is None else {"mask": mb.masks[0]}
        scores = network.evaluate_actions(map_obs(lambda t: t[0], mb.obs), mb.actions[0], **kwargs)
        return tuple(x.unsqueeze(0) for x in scores)  # type: ignore[return-value]

    # ------------------------------------------------------------------ signals
    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop_signal is not None:  # second signal: stop now
            raise KeyboardInterrupt
        self._stop_signal = signum

    def _interrupt(self, outcomes: list[Optional[Outcome]]) -> None:
        """Checkpoint every running member, then raise ``TrainingInterrupted``."""
        running = [m for i, m in enumerate(self.members) if outcomes[i] is None]
        paths = [m.save(f"update_{m.iteration:06d}.pt") for m in running]
        name = signal.Signals(self._stop_signal).name
        if len(self.members) == 1 and running:
            m = running[0]
            raise TrainingInterrupted(
                f"{name} received at update {m.iteration} (global_step {m.global_step}); "
                f"checkpoint saved to {paths[0]}. Resume with: python train.py resume={m.run_dir}"
            )
        raise TrainingInterrupted(
            f"{name} received; {len(paths)} population members saved checkpoints "
            f"({', '.join(f'{p.name} at update {m.iteration}' for p, m in zip(paths, running))}). Resume with: "
            + "; ".join(f"python train.py resume={m.run_dir}" for m in running)
        )

