"""The config of an evaluation of runs named by path (nlhf-eval --policy=...: nlhf_jax/cli/eval.py).

- `parse_policies(text)`: 'a=runs/a,b=runs/b' -> [(name, absolute path)], names unique.
- `runs_config(policies, ...)`: the eval config (what evaluate.evaluate reads; its `sampling` section holds
  max_new_tokens and temperature); what the runs share (tokenizer, prompt length, chat template, and the response
  length when --max_new_tokens is 0) is read from the reference's saved config, and every input is checked first
  (the judge and its kind, the prompts, evaluation/inputs.py's settings and runs), before any model is read.
- `parse_mesh_or_default(text)`: a --mesh value, or every device on 'data'.
Errors are ConfigError (one `error:` line through nlhf_jax.cli.common).
"""
from __future__ import annotations

import os

import ml_collections

from nlhf_jax.config import ConfigError
from nlhf_jax.distributed.mesh import parse_mesh
from nlhf_jax.evaluation import inputs
from nlhf_jax.online.judges import resolve_oracle
from nlhf_jax.online.prompted import DEFAULT_MAX_LEN
from nlhf_jax.training import checkpointing

JUDGE_KINDS = ('', 'preference_model', 'reward_model', 'prompted')


def parse_policies(text: str) -> list[tuple[str, str]]:
  """'a=runs/a,b=runs/b' -> [('a', 'runs/a'), ('b', 'runs/b')]; a clear error for anything else."""
  out = []
  for item in (part.strip() for part in text.split(',') if part.strip()):
    name, sep, path = item.partition('=')
    if not sep or not name.strip() or not path.strip():
      raise ConfigError(f'--policy/--policies: {item!r} is not NAME=RUN_DIR; give each run as --policy=NAME=RUN_DIR '
                        '(e.g. --policy=sft=runs/sft --policy=md=runs/nash_md)')
    out.append((name.strip(), os.path.abspath(path.strip())))
  names = [n for n, _ in out]
  if len(set(names)) != len(names):
    twice = sorted({n for n in names if names.count(n) > 1})
    raise ConfigError(f'--policy/--policies: the name {twice[0]!r} is given twice; give each policy its own name')
  return out


def runs_config(policies: list[tuple[str, str]], reference: str = '', judge: str = '', oracle: str = '',
                prompts: str = '', data_dir: str = '', split: str = 'validation', num_prompts: int = 256,
                samples_per_prompt: int = 1, max_new_tokens: int = 0, temperature: float = 1.0, batch_size: int = 64,
                seed: int = 0, judgement: str = 'expected', output: str = '', mesh: str = '', judge_kind: str = '',
                judge_template: str = '', judge_answers=('A', 'B'), judge_max_len: int = DEFAULT_MAX_LEN
                ) -> ml_collections.ConfigDict:
  """The eval config of runs named by path; what the runs share (tokenizer, prompt length, chat template) is
  read from the reference's saved config. Every input is checked here, before any model is read."""
  reference = reference or policies[0][0]
  if reference not in dict(policies):
    raise ConfigError(f'--reference={reference!r} is not one of the policies ({", ".join(n for n, _ in policies)})')
  if not judge and not oracle:
    raise ConfigError('give a judge: --judge=PREFERENCE_MODEL_RUN and/or --oracle=module:function')
  if judge_kind not in JUDGE_KINDS:
    raise ConfigError(f"--judge_kind={judge_kind}: use 'prompted' (a language model asked which response is "
                      "better) or leave it empty (what the --judge run holds)")
  if judge_kind and not judge:
    raise ConfigError(f'--judge_kind={judge_kind} describes --judge, which is not given; give --judge=RUN')
  prompted = dict(judge_kind=judge_kind if judge else '', judge_template=os.path.abspath(judge_template)
                  if judge_template else '', judge_answers=list(judge_answers), judge_max_len=judge_max_len)
  if oracle:
    resolve_oracle(oracle, '--oracle')
  if not prompts:
    raise ConfigError('give the prompts to evaluate on: --prompts=DATASET --data_dir=DIR (a data set built by '
                      '`nlhf-data build --kind=prompts`) or --prompts=FILE.jsonl (prompt records)')
  if not data_dir and not os.path.isfile(prompts):
    raise ConfigError(f'--prompts={prompts}: no such file; give a file of prompt records (JSONL or Parquet) or a '
                      'data set name with --data_dir=DIR')
  runs = ml_collections.ConfigDict(dict(
      policy_names=[n for n, _ in policies], policy_workdirs=[p for _, p in policies],
      preference_model=os.path.abspath(judge) if judge else '', num_prompts=num_prompts,
      samples_per_prompt=samples_per_prompt, batch_size=batch_size,
      sampling=dict(max_new_tokens=max_new_tokens or 1, temperature=temperature), **prompted))
  inputs.check_settings(runs)
  inputs.check_runs(runs)
  ref = checkpointing.read_run_config(dict(policies)[reference])
  data, sampling = ref.get('data', {}), ref.get('online', {}).get('sampling', {})
  new_tokens = max_new_tokens or int(sampling.get('max_new_tokens') or data.get('response_len', 64))
  return ml_collections.ConfigDict(dict(
      seed=seed, judgement=judgement, mesh=parse_mesh_or_default(mesh), policy_names=[n for n, _ in policies],
      policy_workdirs=[p for _, p in policies], reference=reference,
      preference_model=os.path.abspath(judge) if judge else '', tokenizer=data.get('tokenizer', 'bytes'),
      chat_template=bool(data.get('chat_template', False)), data_dir=os.path.abspath(data_dir) if data_dir else '',
      prompts_name=prompts if data_dir else os.path.abspath(prompts),
      split=split, num_prompts=num_prompts, samples_per_prompt=samples_per_prompt,
      prompt_len=int(data.get('prompt_len', 32)),
      sampling=dict(max_new_tokens=new_tokens, temperature=temperature), batch_size=batch_size, num_shown=8,
      oracle=oracle,
      output_dir=os.path.abspath(output or 'eval'), **prompted))


def parse_mesh_or_default(text: str) -> dict:
  return parse_mesh(text) if text else {'data': -1, 'fsdp': 1, 'tensor': 1}
