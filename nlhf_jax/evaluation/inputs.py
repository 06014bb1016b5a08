"""The checks an evaluation makes before it restores a model or samples a token, and the batch it samples in.

- `check_settings(ecfg)`: counts of the eval config are positive (num_prompts, samples_per_prompt, batch_size)
  and the options of its `sampling` section (max_new_tokens, temperature) pass the one check of
  config/validate.py.
- `check_runs(ecfg)`: every policy is a language model run with a checkpoint, the learned judge (if any) a
  preference_model or reward_model run (with judge_kind='prompted' a language model run, which reads text with its
  own tokenizer and is left out of what follows), and all of them share one vocabulary: the same tokenizer (the
  same spec, or tokenizer files with the same content) and the same embedding size (`model.vocab_size`). A
  policy's samples are decoded with the reference's tokenizer and read as ids by mu and by the judge, so runs that
  differ there would be compared on garbage; the error names each run and what it has. Runs whose `data.chat_template`
  differs from the reference's are named in a warning (prompts are framed as the reference was trained).
- `batch_rows(num_rows, batch_size, shards)`: the rows of one sampling batch, the smallest multiple of the mesh's
  batch shards (data x fsdp) that holds every row, and at most `batch_size`; a `batch_size` that the shards do not
  divide is refused.
Errors are ConfigError (one `error:` line through nlhf_jax.cli.common).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os

from nlhf_jax.config import ConfigError
from nlhf_jax.config.validate import check_sampling
from nlhf_jax.online.prompted import check_judge_run
from nlhf_jax.training.run import Run

JUDGE_OBJECTIVES = ('preference_model', 'reward_model')

log = logging.getLogger(__name__)


def check_settings(ecfg) -> None:
  for key in ('num_prompts', 'samples_per_prompt', 'batch_size'):
    if int(ecfg[key]) < 1:
      raise ConfigError(f'{key}={ecfg[key]}: must be at least 1 (--{key}, or eval.{key} of a pipeline config)')
  check_sampling(ecfg.sampling, 'sampling.', fix='--{key}, or eval.sampling.{key} of a pipeline config')


def batch_rows(num_rows: int, batch_size: int, shards: int) -> int:
  """Rows per sampling batch: the smallest multiple of `shards` that holds `num_rows`, capped at `batch_size`."""
  if batch_size % shards:
    up = -(-batch_size // shards) * shards
    raise ConfigError(f'batch size {batch_size} (--batch_size, or eval.batch_size of a pipeline config) does not '
                      f'divide over the {shards} devices that split the batch (mesh data x fsdp); use a multiple '
                      f'of {shards}, e.g. {up}')
  return min(batch_size, max(1, -(-num_rows // shards)) * shards)


def _runs(ecfg) -> list[tuple[str, str, Run]]:
  """(label, path, Run) of every policy and of the learned judge; missing runs fail here, by name."""
  out = []
  for name, path in zip(ecfg.policy_names, ecfg.policy_workdirs):
    run = _open(path, f'policy {name}')
    if run.family != 'language_model':
      raise ConfigError(f'policy {name}={path} is a {run.objective!r} run, not a policy (a language model); '
                        'give the runs of language models (sft, nash_md, dpo, ... or an imported model)')
    out.append((f'{name}={path}', path, run))
  judge = ecfg.get('preference_model', '')
  if judge:
    run = _open(judge, 'the judge')
    if ecfg.get('judge_kind', '') == 'prompted':
      check_judge_run(run.config, judge, '--judge')
      return out
    if run.objective not in JUDGE_OBJECTIVES:
      raise ConfigError(f'judge {judge} is a {run.objective!r} run; give a preference_model or reward_model run '
                        '(or a language model run with --judge_kind=prompted)')
    out.append((f'judge={judge}', judge, run))
  return out


def _open(path: str, what: str) -> Run:
  """The run at `path`, its config read and a checkpoint there (`what` names it in the errors)."""
  if not os.path.exists(path) and '://' not in path:
    raise FileNotFoundError(f'{what}: {path} does not exist; give the --workdir of an nlhf-train or nlhf-import run')
  run = Run(path)
  try:
    run.config
    run.require_checkpoint()
  except FileNotFoundError as e:
    raise FileNotFoundError(f'{what}: {e}') from None
  return run


def tokenizer_digest(spec: str) -> str:
  """What identifies a tokenizer: 'bytes', or a hash of its files (a sentencepiece model; a Hugging Face
  directory's tokenizer.json with the special tokens of tokenizer_config.json and special_tokens_map.json, whose
  bos, eos and pad ids decide where a sample ends; its chat template is compared apart); '' when unreadable."""
  if spec == 'bytes':
    return spec
  digest = hashlib.sha256()
  try:
    if not os.path.isdir(spec):
      with open(spec, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()
    with open(os.path.join(spec, 'tokenizer.json'), 'rb') as f:
      digest.update(f.read())
    for name in ('tokenizer_config.json', 'special_tokens_map.json'):
      path = os.path.join(spec, name)
      if os.path.exists(path):
        with open(path, encoding='utf-8') as f:
          settings = json.load(f)
        if isinstance(settings, dict):
          settings.pop('chat_template', None)
        digest.update(name.encode() + json.dumps(settings, sort_keys=True).encode())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError):
    return ''
  return digest.hexdigest()


def _differ(values: list[tuple[str, object]], what: str) -> str:
  return f'{what} differ: ' + ', '.join(f'{label} has {value}' for label, value in values)


def check_runs(ecfg) -> None:
  """Every run is of a usable kind and all share one tokenizer and embedding size (see the module docstring)."""
  runs = _runs(ecfg)
  specs = [(label, run.tokenizer) for label, _, run in runs]
  problems = []
  if len({s for _, s in specs}) > 1:
    digests = {s: tokenizer_digest(s) for _, s in specs}
    if '' in digests.values() or len(set(digests.values())) > 1:
      unread = [s for s, d in digests.items() if not d]
      problems.append(_differ(specs, 'tokenizers') + (f' ({", ".join(unread)} cannot be read)' if unread else ''))
  sizes = [(label, int(run.config.get('model', {}).get('vocab_size', 0))) for label, _, run in runs]
  if len({v for _, v in sizes}) > 1:
    problems.append(_differ([(label, f'vocab_size {v}') for label, v in sizes], 'vocabularies (model.vocab_size)'))
  if problems:
    raise ConfigError('the runs do not share one vocabulary, so one tokenizer cannot read their samples: '
                      + '; '.join(problems) + '. Evaluate together only runs trained with the same tokenizer and '
                      'vocabulary (the policies and the judge), e.g. runs started from the same imported model')
  _warn_chat_template(ecfg, runs)


def _warn_chat_template(ecfg, runs) -> None:
  """Prompts are framed as the reference's run framed them (with its chat template or not): say which policies
  were trained otherwise (a run on conversations uses the template whatever the flag says, so this is no error)."""
  reference = dict(zip(ecfg.policy_names, ecfg.policy_workdirs)).get(ecfg.get('reference', ''), '')
  chat = {path: bool(run.config.get('data', {}).get('chat_template', False)) for _, path, run in runs}
  other = [label for label, path, _ in runs if reference in chat and chat[path] != chat[reference]]
  if other:
    log.warning('eval: the prompts are framed %s the chat template, as the reference %s was trained; %s set '
                'data.chat_template=%s', 'with' if chat[reference] else 'without', ecfg.reference, ', '.join(other),
                not chat[reference])
