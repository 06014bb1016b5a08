"""One pure train step for every online objective: sample, judge, differentiate on the fixed samples, update.

  step(state, frozen, batch) -> (state, metrics)

state: the policy's TrainState (extras['ema'] holds the EMA parameters for nash_ema); frozen: {'reference': mu's
params, 'judge': the judge's params or None}, sharded by the rule table and never differentiated (with LoRA,
{'base': the base weights, 'judge': ...}: state.params are the adapters, the policy is base + adapters and mu is
the base run without them, so the reference costs no memory of its own); batch: prompts
{'prompt' [B, Lp] left-padded, 'prompt_mask', 'example_index' int32 [B]} (global dataset indices: the sampling keys
are folded from them, so samples do not depend on the mesh or the number of processes).

Objectives (config.train.objective):
- nash_md: y ~ pi_theta, y' ~ pi^beta (token-level mixture of pi_theta and mu), Nash-MD-PG; beta = 0 is self-play,
  beta = 1 best response to mu;
- nash_ema: as nash_md with the opponent the policy with EMA parameters (updated after every step);
- rlhf: y, y'' ~ pi_theta, regularised policy gradient on a reward model's r(x, y) with baseline r(x, y'');
- online_ipo: y, y' ~ pi_theta, IPO loss weighted by the judge; ipo_md: both samples from pi^beta;
- inpo, comal, mpo: y, y' ~ pi_t (state.extras['pi_t'], the policy of the iteration, refreshed every
  online.iteration_steps steps), the squared loss whose minimiser is their mirror step (objectives/successors.py);
  comal's prox centre and mpo's magnet (extras['prox'], extras['magnet']) replace mu in it and are reset to the
  policy every online.prox_iterations iterations;
- sppo: K = online.samples_per_prompt samples of pi_t per prompt, every pair judged, each sample regressed on its
  win rate against the others;
- extragradient: online IPO's gradient at theta_t makes the half step, the gradient at the half step is applied
  from theta_t (both sampled and judged in the one step).
With config.online.sampling.temperature != 1 or top-k/top-p, "pi_theta" in every loss is the distribution sampled, pi_T
(`sampled_logprobs`): the tempered, filtered policy is what is optimised. The loss is the one the objective's row
names, found in the registry of losses (objectives/registry.py); the row's fields say what it samples and reads.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from nlhf_jax.config import ExperimentConfig, objectives
from nlhf_jax.models import lora
from nlhf_jax.models.logprobs import response_logprobs
from nlhf_jax.objectives import online as losses
from nlhf_jax.objectives import registry, successors
from nlhf_jax.online.judges import Judge, binary_judgement
from nlhf_jax.sampling import Groups, SamplingConfig, Strategy, row_keys, run, sample, sample_pair
from nlhf_jax.training.state import TrainState

sg = jax.lax.stop_gradient


def sampling_config(cfg: ExperimentConfig, stop_ids: tuple[int, ...]) -> SamplingConfig:
  return SamplingConfig.from_section(cfg.online.sampling, stop_ids, cfg.model.pad_id)


def sampled_logprobs(model, prompt, prompt_mask, response, response_mask, scfg: SamplingConfig) -> jax.Array:
  """float32 log pi_T(y_n | x, y_<n) [B, T] (0 at padding): the log-probabilities of the distribution the sampler
  drew y from, pi_theta's logits at `scfg.temperature` through its top-k and top-p filters (sampling/strategies.py;
  temperature 0, greedy, counts as 1). Every online loss differentiates these, so the policy-gradient estimates
  are unbiased for the objective of pi_T, the policy actually sampled (docs/math.md section 4).

  At temperature 1 without filters they are `response_logprobs`. With a temperature alone and no final soft-cap,
  logits(h / T) = logits(h) / T (the projection is linear), so the hidden states are scaled and the vocabulary
  projection stays as it was (chunked with model.logits_chunk). Filters (or a soft-cap) need the whole
  distribution: the [B, T, V] logits are made, even with model.logits_chunk. The sampled token is always kept in
  the filtered support (a token at the filter's edge could fall out of it by a rounding difference between the
  decode loop and this pass)."""
  temperature, strategy = scfg.temperature or 1.0, Strategy.of(scfg)
  filters = strategy.truncates(model.cfg.vocab_size)
  if temperature == 1.0 and not filters:
    return response_logprobs(model, prompt, prompt_mask, response, response_mask)
  tokens = jnp.concatenate([prompt, response], axis=1)
  mask = jnp.concatenate([prompt_mask, response_mask], axis=1)
  hidden, _ = model.hidden(tokens[:, :-1], mask[:, :-1])
  hidden = hidden[:, prompt.shape[1] - 1:]
  if not filters and not model.cfg.final_logit_softcap:
    lp = model.token_logprobs(hidden / jnp.asarray(temperature, hidden.dtype), response)
  else:
    tempered = model.logits(hidden) / temperature
    filtered = strategy.truncate(tempered)
    target = jax.nn.one_hot(response, tempered.shape[-1], dtype=bool)
    logp = jax.nn.log_softmax(jnp.where(target, tempered, filtered), axis=-1)
    lp = jnp.take_along_axis(logp, response[..., None], axis=-1)[..., 0]
  return jnp.where(response_mask, lp, 0.0)


def repeat_prompts(batch: dict, k: int) -> dict:
  """k samples per prompt: each prompt repeated k times, sample j of example i gets the id i * k + j."""
  if k == 1:
    return batch
  out = {key: jnp.repeat(v, k, axis=0) for key, v in batch.items()}
  out['example_index'] = (jnp.repeat(batch['example_index'], k) * k
                          + jnp.tile(jnp.arange(k, dtype=jnp.int32), batch['example_index'].shape[0]))
  return out


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity (holds arrays)
class OnlineStep:
  cfg: ExperimentConfig
  graphdef: nnx.GraphDef
  tx: optax.GradientTransformation
  lr_schedule: optax.Schedule
  judge: Judge
  stop_ids: tuple[int, ...]  # the tokenizer's ids that end a response
  mesh: Mesh | None = None  # constrains the sampler's caches and activations by the rule table
  base_graphdef: nnx.GraphDef | None = None  # LoRA: the model without adapters, which runs mu from frozen['base']

  @property
  def objective(self) -> objectives.Objective:
    """The objective's description (config/objectives.py): its opponent, loss and what the loss reads."""
    return objectives.get(self.cfg.train.objective)

  def model_params(self, params, frozen: dict):
    """What `graphdef` runs: the trained params, with LoRA combined with the frozen base."""
    return lora.with_base(params, frozen['base'] if self.base_graphdef is not None else None)

  def reference(self, frozen: dict) -> tuple[nnx.GraphDef, dict]:
    """(graphdef, params) of mu: with LoRA the base weights without the adapters."""
    if self.base_graphdef is None:
      return self.graphdef, frozen['reference']
    return self.base_graphdef, frozen['base']

  def opponent(self, state: TrainState, frozen: dict):
    """(anchor graphdef, anchor params, beta) of the opponent's token-level mixture and whether y is also drawn
    from it."""
    spec = self.objective
    if spec.opponent == 'ema':  # the policy with its EMA parameters alone
      return self.graphdef, self.model_params(state.extras['ema'], frozen), 1.0, False
    if spec.opponent == 'policy':  # an independent sample of pi_theta (a mixture with no weight on mu)
      return *self.reference(frozen), 0.0, False
    return *self.reference(frozen), self.cfg.online.beta, spec.both_from_opponent

  def sample(self, params, anchor_graphdef, anchor, batch, key, beta: float, both_mixed: bool):
    """(y, y'): y ~ pi_theta and y' ~ pi^beta, or both from pi^beta (ipo_md); each {'tokens', 'mask', 'logprobs'}.
    `params` are what self.graphdef runs."""
    scfg = sampling_config(self.cfg, self.stop_ids)
    if not both_mixed or beta in (0.0, 1.0):
      out = sample_pair(self.graphdef, params, anchor_graphdef, anchor, batch, key, scfg, beta, self.mesh)
      if not both_mixed:
        return out['policy'], out['mixture']
      return out['mixture'], sample_pair(self.graphdef, params, anchor_graphdef, anchor, batch,
                                         jax.random.fold_in(key, 1), scfg, beta, self.mesh)['mixture']
    groups = Groups(n_policy=0, n_mix=2)
    policy, ref = nnx.merge(self.graphdef, params), nnx.merge(anchor_graphdef, anchor)
    out = run(policy, ref, batch, row_keys(key, batch['example_index'], 2), scfg, groups, beta, self.mesh)
    return ({k: v[:, 0] for k, v in out.items()}, {k: v[:, 1] for k, v in out.items()})

  def __call__(self, state: TrainState, frozen: dict, batch: dict):
    if self.objective.extragradient:  # both half steps sampled and judged here, with keys of their own
      def grad_at(params, i):
        loss, grads, out = self.loss_and_grads(state, frozen, batch, params, jax.random.fold_in(state.step_key(), i))
        return grads, (loss, grads, out)
      params, opt_state, (loss, grads, out) = successors.extragradient_update(self.tx, state.params, state.opt_state,
                                                                              grad_at)
    else:
      loss, grads, out = self.loss_and_grads(state, frozen, batch)
      updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
    metrics = self.metrics(loss, grads, state, out)
    extras = self.next_extras(state.step + 1, state.extras, params)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, extras=extras), metrics

  def next_extras(self, step: jax.Array, extras, params):
    """The objective's extra state after update number `step`: the EMA moves towards the new parameters; pi_t
    becomes them after every iteration_steps updates, the prox centre or magnet after every prox_iterations
    iterations."""
    spec, o = self.objective, self.cfg.online
    if not spec.extras:
      return extras
    extras = dict(extras)
    if spec.ema:
      extras['ema'] = jax.tree.map(lambda e, p: o.ema_rate * e + (1.0 - o.ema_rate) * p, extras['ema'], params)
    replace = lambda now, old: jax.tree.map(lambda a, b: jnp.where(now, a, b), params, old)
    if spec.iterate:
      extras['pi_t'] = replace(step % o.iteration_steps == 0, extras['pi_t'])
    if spec.prox:
      extras[spec.prox] = replace(step % (o.iteration_steps * o.prox_iterations) == 0, extras[spec.prox])
    return extras

  def draw(self, state: TrainState, frozen: dict, params, batch: dict, key):
    """(y, y'): the responses the loss reads (y' None when the row's loss reads win rates, sppo: the K samples
    of a prompt are rows of y).
    `params` are the trained ones."""
    spec = self.objective
    if spec.opponent == 'iterate':
      pi_t = self.model_params(state.extras['pi_t'], frozen)
      if spec.win_rates:
        return sample(self.graphdef, pi_t, batch, jax.random.fold_in(key, 0), self.scfg, self.mesh), None
      out = sample_pair(self.graphdef, pi_t, None, None, batch, key, self.scfg, 0.0, self.mesh)
      return out['policy'], out['mixture']
    anchor_graphdef, anchor, beta, both_mixed = self.opponent(state, frozen)
    return self.sample(self.model_params(params, frozen), anchor_graphdef, anchor, batch, key, beta, both_mixed)

  @property
  def scfg(self) -> SamplingConfig:
    return sampling_config(self.cfg, self.stop_ids)

  def judge_samples(self, frozen: dict, batch: dict, y: dict, key) -> jax.Array:
    """sppo: the win rate [B K] of each of a prompt's K samples (consecutive rows of y) against the K - 1 others,
    every unordered pair judged once (as a 0/1 draw with binary_judgements)."""
    k = self.cfg.online.samples_per_prompt
    first, second = successors.pair_indices(k)
    grouped = lambda v: v.reshape((-1, k) + v.shape[1:])
    pick = lambda v, idx: grouped(v)[:, idx].reshape((-1,) + v.shape[1:])
    texts = [pick(v, first) for v in (batch['prompt'], batch['prompt_mask'], y['tokens'], y['mask'])]
    pref = self.judge.prob(frozen['judge'], *texts, pick(y['tokens'], second), pick(y['mask'], second))
    if self.cfg.online.binary_judgements:
      ids = grouped(batch['example_index'])[:, :1] // k * len(first) + jnp.arange(len(first), dtype=jnp.int32)
      pref = binary_judgement(pref, key, ids.reshape(-1))
    return successors.win_rates(pref.reshape(-1, len(first)), k).reshape(-1)

  def loss_and_grads(self, state: TrainState, frozen: dict, batch: dict, params=None, key=None):
    """(loss, grads, outputs) at `params` (default: the state's) with the step's key (or `key`): the samples,
    the judge's preferences and the log-probabilities, for the metrics (and for tests that compare meshes)."""
    o, spec, scfg = self.cfg.online, self.objective, self.scfg
    params = state.params if params is None else params
    k_sample, k_judge = jax.random.split(state.step_key() if key is None else key)
    batch = repeat_prompts(batch, o.samples_per_prompt)
    x = (batch['prompt'], batch['prompt_mask'])
    y, y2 = self.draw(state, frozen, params, batch, k_sample)
    yt = (y['tokens'], y['mask'])
    y2t = None if y2 is None else (y2['tokens'], y2['mask'])
    ref = nnx.merge(*self.reference(frozen))
    aux_in = {'ref_lp': sg(response_logprobs(ref, *x, *yt))}
    if y2 is None:
      aux_in['pref'] = sg(self.judge_samples(frozen, batch, y, k_judge))
    else:
      pref = sg(self.judge.prob(frozen['judge'], *x, *yt, *y2t))
      aux_in['pref'] = binary_judgement(pref, k_judge, batch['example_index']) if o.binary_judgements else pref
    if spec.rewards:
      aux_in['reward'], aux_in['baseline'] = sg(self.judge.rewards(frozen['judge'], *x, *yt, *y2t))
    if spec.second_logprobs:
      aux_in['ref_lp2'] = sg(response_logprobs(ref, *x, *y2t))
    if spec.iterate:  # log pi_t of the distribution sampled, as log pi below
      pi_t = nnx.merge(self.graphdef, self.model_params(state.extras['pi_t'], frozen))
      aux_in['anchor_lp'] = sg(sampled_logprobs(pi_t, *x, *yt, scfg))
      if y2 is not None:
        aux_in['anchor_lp2'] = sg(sampled_logprobs(pi_t, *x, *y2t, scfg))
    if spec.prox:  # the moving reference replaces mu in the loss
      prox = nnx.merge(self.graphdef, self.model_params(state.extras[spec.prox], frozen))
      aux_in['kl_ref_lp'] = sg(response_logprobs(prox, *x, *yt))
      aux_in['kl_ref_lp2'] = sg(response_logprobs(prox, *x, *y2t))
    elif spec.iterate and y2 is not None:
      aux_in['kl_ref_lp'], aux_in['kl_ref_lp2'] = aux_in['ref_lp'], aux_in['ref_lp2']
    objective_loss = registry.loss_of(spec)
    inputs = dict(aux_in, mask=y['mask'], mask2=None if y2 is None else y2['mask'])

    def loss_fn(params):  # log-probabilities of the distribution sampled (tempered, filtered): unbiased for pi_T
      policy = nnx.merge(self.graphdef, self.model_params(params, frozen))
      lp = sampled_logprobs(policy, *x, *yt, scfg)
      lp2 = sampled_logprobs(policy, *x, *y2t, scfg) if spec.second_logprobs else None
      return objective_loss(lp, lp2, inputs, o), sg(lp)

    (loss, lp), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    out = dict(aux_in, y=y, y2=y2, lp=lp)
    return loss, grads, out

  def metrics(self, loss, grads, state, out) -> dict:
    y, y2, lp = out['y'], out['y2'], out['lp']
    stats = losses.sample_statistics(lp, out['ref_lp'], y['mask'])
    ended = jnp.any(self.scfg.is_stop(y['tokens']) & y['mask'], axis=1)
    metrics = dict(stats, loss=loss, grad_norm=optax.tree.norm(grads), learning_rate=self.lr_schedule(state.step),
                   preference=out['pref'].mean(), entropy=-jnp.mean(jnp.sum(lp, axis=1)),
                   eos_rate=ended.astype(jnp.float32).mean(), sampled_tokens=y['mask'].sum().astype(jnp.float32))
    if y2 is not None:
      metrics['opponent_length'] = y2['mask'].sum(1).astype(jnp.float32).mean()
      metrics['sampled_tokens'] += y2['mask'].sum().astype(jnp.float32)
    if 'anchor_lp' in out:  # log(pi / pi_t) of the samples: how far the iteration has moved
      metrics['iterate_logratio'] = jnp.mean(successors.sequence_logprob(lp - out['anchor_lp'], y['mask']))
    if 'reward' in out:
      metrics['reward'] = out['reward'].mean()
    return metrics
