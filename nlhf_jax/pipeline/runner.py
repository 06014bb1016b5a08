"""Running the stages in order: finished stages (DIR/STAGE/DONE) are skipped, an interrupted one resumes.

Training stages resume by themselves (nlhf-train continues from DIR/STAGE/checkpoints); the other stages are
cheap and idempotent and simply run again. A stage's config is recorded as DIR/STAGE/stage.json (a training
stage's run writes its own config.json beside it); a finished stage whose stage.json differs from the current
config is still skipped (with a warning): delete DIR/STAGE to redo it. Recorded configs (stage.json, pipeline.json)
are compared in the current layout (stages.upgrade_stage_config, stages.upgrade_recorded: a folder written before
the `sampling` sections existed resumes as it would have). With several seeds a stage's name is
'seed_S/STAGE' (its folder DIR/seed_S/STAGE) and runs as STAGE does; the last stage, 'eval', then pools the seeds'
evaluations (evaluation/findings.py).

Before any stage runs, `check_workdir` refuses a DIR that is a file, that holds anything a pipeline does not write
and no pipeline.json (it is some other folder; a pipeline's own folder may hold the user's files beside its
stages, e.g. a re-evaluation's --output=DIR/eval2, which no stage touches), or whose pipeline.json records another
config (unless `overwrite`: the pipeline then goes on with the new config and records it); `check_stages`
refuses --stages names that are no stage and stages whose inputs have not finished; `resume_summary` says what a
DIR holds and what will run.
"""
from __future__ import annotations

import json
import logging
import os
import re
import time

import jax

from nlhf_jax import outputs
from nlhf_jax.benchmark import language
from nlhf_jax.config import ConfigError, from_config_dict, objectives
from nlhf_jax.data import tfds_builders
from nlhf_jax.data.tokenizer import load_tokenizer, train_sentencepiece
from nlhf_jax.distributed import barrier, is_leader
from nlhf_jax.evaluation import evaluate, findings, report
from nlhf_jax.pipeline import pairs, stages
from nlhf_jax.trainer.loop import train

log = logging.getLogger(__name__)

MARKER = 'DONE'
STAGE_CONFIG = 'stage.json'  # not config.json: that name is the run's own record in a training stage
PIPELINE_CONFIG = 'pipeline.json'


class Interrupted(RuntimeError):
  """Raised by `run_pipeline(..., interrupt=(stage, step))` after that stage's checkpoint at `step`."""


def _tokenizer(scfg, stage_dir: str, mesh) -> None:
  if scfg.kind == 'bytes' or not is_leader():
    return
  train_sentencepiece(language.corpus_text(scfg.seed, scfg.corpus_size), scfg.vocab_size,
                      os.path.splitext(scfg.output)[0])
  pieces = load_tokenizer(scfg.output).vocab_size
  log.info('tokenizer: %d pieces in %s', pieces, scfg.output)
  if pieces < scfg.vocab_size:  # the models keep vocab_size rows; the unused ones decode to nothing
    log.warning('the corpus gave %d pieces, fewer than tokenizer.vocab_size=%d', pieces, scfg.vocab_size)


def _data(scfg, stage_dir: str, mesh) -> None:
  if not is_leader():
    return
  # Prompts are examples [0, num_prompts), demonstrations the next num_demonstrations: disjoint sets.
  sets = {'prompts': language.prompt_records(scfg.seed, scfg.num_prompts),
          'demonstrations': language.demonstration_records(scfg.seed, scfg.num_demonstrations, scfg.num_prompts)}
  for name, recs in sets.items():
    counts = tfds_builders.build(recs, name, name, scfg.data_dir, scfg.validation_fraction, scfg.seed,
                                 overwrite=True)
    log.info('data: %s %s', name, counts)


def _pairs(scfg, stage_dir: str, mesh) -> None:
  pairs.run(scfg, stage_dir, mesh)


def _eval(scfg, stage_dir: str, mesh) -> None:
  result = evaluate.evaluate(scfg, mesh)  # every process samples its rows
  if is_leader():
    report.write(result, scfg.output_dir)


def _train(scfg, stage_dir: str, mesh, stop_at: int | None = None) -> None:
  train(from_config_dict(scfg, num_devices=jax.device_count()), stage_dir, mesh, stop_at=stop_at)


def _aggregate(scfg, stage_dir: str, mesh) -> None:
  if not is_leader():
    return
  results = []
  for path in scfg.seed_evals:
    with open(os.path.join(path, 'matrix.json')) as f:
      results.append(json.load(f))
  paths = findings.write_aggregate(results, list(scfg.seeds), scfg.output_dir)
  log.info('eval: %d seeds pooled into %s', len(results), ', '.join(paths.values()))


RUNNERS = {'tokenizer': _tokenizer, 'data': _data, 'pairs': _pairs, 'eval': _eval}


def _kind(name: str, scfg) -> str:
  """What a stage runs: its name without the seed_S/ prefix; 'aggregate' for the pooling of several seeds."""
  return 'aggregate' if scfg.get('aggregate', False) else name.rsplit('/', 1)[-1]


def _write_config(scfg, stage_dir: str) -> None:
  """Writes DIR/STAGE/stage.json whole (a temporary file renamed), so no process ever reads half of it."""
  outputs.write_text(os.path.join(stage_dir, STAGE_CONFIG), scfg.to_json(indent=1, sort_keys=True))


def _finished_config_changed(scfg, stage_dir: str) -> bool:
  """Whether the stage.json in `stage_dir` (read in the current layout: stages.upgrade_stage_config) differs from
  `scfg`."""
  path = os.path.join(stage_dir, STAGE_CONFIG)
  if not os.path.exists(path):
    return False
  try:
    with open(path) as f:
      recorded = json.load(f)
  except ValueError:
    return True
  return stages.upgrade_stage_config(recorded) != json.loads(scfg.to_json())


def _flat(d: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    out.update(_flat(v, f'{prefix}{k}.') if isinstance(v, dict) else {f'{prefix}{k}': v})
  return out


def _pipeline_entry(name: str) -> bool:
  """Whether a pipeline (of any config) writes a top-level entry of this name: a stage, a policy, a seed folder or
  pipeline.json."""
  if name in (*stages.FIXED_BEFORE, 'eval', PIPELINE_CONFIG) or re.fullmatch(r'seed_-?\d+', name):
    return True
  try:
    stages.parse_policy(name)
    return True
  except ConfigError:
    return False


def check_workdir(p, workdir: str, overwrite: bool = False) -> None:
  """Refuses a workdir that is a file, that holds what no pipeline writes and no pipeline.json (not a pipeline's
  folder), or that records another pipeline config (unless `overwrite`)."""
  outputs.check_dir(workdir)  # not a file, nor below one
  if not os.path.isdir(workdir):
    return
  path = os.path.join(workdir, PIPELINE_CONFIG)
  other = sorted(n for n in os.listdir(workdir) if not _pipeline_entry(n) and not n.startswith('.'))
  if other and not os.path.isfile(path):
    shown = ', '.join(other[:5]) + (', ...' if len(other) > 5 else '')
    raise outputs.OutputError(f'--workdir={workdir} holds {shown}, which no pipeline writes (it is not a pipeline '
                              'folder): give a new or empty folder')
  if overwrite or not os.path.isfile(path):
    return
  try:
    with open(path) as f:
      recorded = _flat(stages.upgrade_recorded(json.load(f)))
  except (OSError, ValueError):
    return  # unreadable: the current config replaces it
  current = _flat(json.loads(p.to_json()))
  changed = sorted(k for k in set(recorded) | set(current) if recorded.get(k, '(none)') != current.get(k, '(none)'))
  if changed:
    shown = '; '.join(f'config.{k}: {recorded.get(k, "(none)")} recorded, {current.get(k, "(none)")} now'
                      for k in changed[:4]) + ('; ...' if len(changed) > 4 else '')
    raise ConfigError(f'--workdir={workdir} holds a pipeline of another config ({shown}); its finished stages '
                      'would be kept as they are: use a new --workdir, or pass --overwrite to go on with this config '
                      '(finished stages are skipped; delete DIR/STAGE to redo one)')


def _needs(name: str, scfg, configs: dict) -> list[str]:
  """The stages whose outputs stage `name` reads."""
  kind, prefix = _kind(name, scfg), name.rsplit('/', 1)[0] + '/' if '/' in name else ''
  shared = ['tokenizer', 'data']
  if kind == 'aggregate':
    return [n for n in configs if n.endswith('/eval')]
  if kind in shared:
    return []
  if kind == 'sft':
    return shared
  if kind == 'pairs':
    return [*shared, prefix + 'sft']
  if kind in ('preference_model', 'reward_model'):
    return [*shared, prefix + 'pairs']
  if kind == 'eval':  # mu, the preference model and every policy of this seed
    own = [n for n in configs if n.startswith(prefix) and '/' not in n[len(prefix):]]
    return [*shared, *(n for n in own if n != name and _kind(n, configs[n]) not in (*shared, 'pairs', 'reward_model'))]
  if objectives.get(scfg.train.objective).offline:
    return [*shared, prefix + 'sft', prefix + 'pairs']
  return [*shared, prefix + 'sft', prefix + scfg.online.judge]


def check_stages(configs: dict, workdir: str, only: list[str] | None) -> None:
  """Refuses --stages names that are no stage, and a chosen stage whose inputs neither have finished nor run."""
  if not only:
    return
  kinds = {n.rsplit('/', 1)[-1] for n in configs}
  unknown = [n for n in only if n not in configs and n not in kinds]
  if unknown:
    raise ConfigError(f'--stages: {", ".join(unknown)} is not a stage of this pipeline; its stages are '
                      f'{", ".join(configs)}')
  chosen = [n for n in configs if n in only or n.rsplit('/', 1)[-1] in only]
  for name in chosen:
    missing = [need for need in _needs(name, configs[name], configs)
               if need not in chosen and not os.path.exists(os.path.join(workdir, need, MARKER))]
    if missing:
      short = list(dict.fromkeys(n.rsplit('/', 1)[-1] for n in [*missing, name]))
      raise ConfigError(f'--stages: stage {name} reads the output of {", ".join(missing)}, which '
                        f'{"has" if len(missing) == 1 else "have"} not finished in {workdir} (no {MARKER} marker); '
                        f'add {"it" if len(missing) == 1 else "them"} (--stages={",".join(short)}) or leave out '
                        '--stages')


def resume_summary(configs: dict, workdir: str, only: list[str] | None = None) -> str:
  """One line: a new pipeline, or what a workdir holds (finished stages, the interrupted one) and what runs."""
  done, started, todo = [], [], []
  for name in configs:
    if only and name not in only and name.rsplit('/', 1)[-1] not in only:
      continue
    stage_dir = os.path.join(workdir, name)
    if os.path.exists(os.path.join(stage_dir, MARKER)):
      done.append(name)
    else:
      (started if os.path.exists(os.path.join(stage_dir, STAGE_CONFIG)) else todo).append(name)
  if not done and not started:
    return f'pipeline in {workdir}: stages to run: {", ".join(todo)}'
  parts = [f'resuming the pipeline in {workdir}: finished (skipped): {", ".join(done) or "none"}']
  if started:
    parts.append(f'started earlier, resumed (training from its last checkpoint): {", ".join(started)}')
  if todo:
    parts.append(f'to run: {", ".join(todo)}')
  return '; '.join(parts)


def run_stage(name: str, scfg, stage_dir: str, mesh=None, stop_at: int | None = None) -> float:
  """Runs one stage (no marker logic); returns its wall time in seconds."""
  start = time.time()
  kind = _kind(name, scfg)
  if kind == 'aggregate':
    _aggregate(scfg, stage_dir, mesh)
  elif kind in RUNNERS:
    RUNNERS[kind](scfg, stage_dir, mesh)
  else:
    _train(scfg, stage_dir, mesh, stop_at)
  barrier(f'pipeline stage {name}')  # files written by process 0 are there for every process
  return time.time() - start


def run_pipeline(p, workdir: str, only: list[str] | None = None, interrupt: tuple[str, int] | None = None,
                 mesh=None, overwrite: bool = False) -> dict[str, str]:
  """Runs the pipeline described by `p` in `workdir`; returns {stage: 'skipped' | 'ran'}.

  only: run just these stages (their inputs must exist; 'sft' also names every seed's 'seed_S/sft').
  overwrite: go on in a workdir whose pipeline.json records another config (check_workdir).
  interrupt=(stage, step): stop that stage's training after `step` as a preemption would (checkpoint, stop), then
  raise Interrupted (a half-finished stage).
  """
  workdir = os.path.abspath(workdir)
  configs = stages.stage_configs(p, workdir)
  check_workdir(p, workdir, overwrite)
  check_stages(configs, workdir, only)
  log.info('%s', resume_summary(configs, workdir, only))
  os.makedirs(workdir, exist_ok=True)
  if is_leader():
    outputs.write_text(os.path.join(workdir, PIPELINE_CONFIG), p.to_json(indent=1, sort_keys=True))
  status = {}
  for name, scfg in configs.items():
    if only and name not in only and name.rsplit('/', 1)[-1] not in only:
      continue
    stage_dir = os.path.join(workdir, name)
    marker = os.path.join(stage_dir, MARKER)
    if os.path.exists(marker):
      if _finished_config_changed(scfg, stage_dir):
        log.warning('stage %s finished with another config (%s); delete %s to redo it', name,
                    os.path.join(stage_dir, STAGE_CONFIG), stage_dir)
      log.info('stage %s: finished earlier (%s), skipped', name, marker)
      status[name] = 'skipped'
      continue
    os.makedirs(stage_dir, exist_ok=True)
    if is_leader():
      _write_config(scfg, stage_dir)
    barrier(f'pipeline config {name}')  # every process starts the stage after its config is written
    stop_at = interrupt[1] if interrupt and interrupt[0] == name else None
    log.info('stage %s: running in %s', name, stage_dir)
    seconds = run_stage(name, scfg, stage_dir, mesh, stop_at)
    if stop_at is not None:
      raise Interrupted(f'stage {name} stopped at step {stop_at} (test hook)')
    if is_leader():
      outputs.write_json(marker, {'stage': name, 'seconds': round(seconds, 1),
                                  'finished': time.strftime('%Y-%m-%d %H:%M:%S')}, indent=None)
    barrier(f'pipeline marker {name}')
    log.info('stage %s: done in %.1fs', name, seconds)
    status[name] = 'ran'
  return status
