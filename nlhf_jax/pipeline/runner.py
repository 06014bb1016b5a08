"""Running the stages in order: finished stages (DIR/STAGE/DONE) are skipped, an interrupted one resumes.

Training stages resume by themselves (nlhf-train continues from DIR/STAGE/checkpoints); the other stages are
cheap and idempotent and simply run again. A stage's config is recorded as DIR/STAGE/stage.json (a training
stage's run writes its own config.json beside it); a finished stage whose stage.json differs from the current
config is still skipped (with a warning): delete DIR/STAGE to redo it. With several seeds a stage's name is
'seed_S/STAGE' (its folder DIR/seed_S/STAGE) and runs as STAGE does; the last stage, 'eval', then pools the seeds'
evaluations (evaluation/findings.py).
"""
from __future__ import annotations

import json
import logging
import os
import time

import jax

from nlhf_jax.distributed import barrier, is_leader
from nlhf_jax.pipeline import stages

log = logging.getLogger(__name__)

MARKER = 'DONE'
STAGE_CONFIG = 'stage.json'  # not config.json: that name is the run's own record in a training stage


class Interrupted(RuntimeError):
  """Raised by `run_pipeline(..., interrupt=(stage, step))` after that stage's checkpoint at `step`."""


def _tokenizer(scfg, stage_dir: str, mesh) -> None:
  if scfg.kind == 'bytes' or not is_leader():
    return
  from nlhf_jax.benchmark import language
  from nlhf_jax.data.tokenizer import load_tokenizer, train_sentencepiece
  train_sentencepiece(language.corpus_text(scfg.seed, scfg.corpus_size), scfg.vocab_size,
                      os.path.splitext(scfg.output)[0])
  pieces = load_tokenizer(scfg.output).vocab_size
  log.info('tokenizer: %d pieces in %s', pieces, scfg.output)
  if pieces < scfg.vocab_size:  # the models keep vocab_size rows; the unused ones decode to nothing
    log.warning('the corpus gave %d pieces, fewer than tokenizer.vocab_size=%d', pieces, scfg.vocab_size)


def _data(scfg, stage_dir: str, mesh) -> None:
  if not is_leader():
    return
  from nlhf_jax.benchmark import language
  from nlhf_jax.data import tfds_builders
  # Prompts are examples [0, num_prompts), demonstrations the next num_demonstrations: disjoint sets.
  sets = {'prompts': language.prompt_records(scfg.seed, scfg.num_prompts),
          'demonstrations': language.demonstration_records(scfg.seed, scfg.num_demonstrations, scfg.num_prompts)}
  for name, recs in sets.items():
    counts = tfds_builders.build(recs, name, name, scfg.data_dir, scfg.validation_fraction, scfg.seed,
                                 overwrite=True)
    log.info('data: %s %s', name, counts)


def _pairs(scfg, stage_dir: str, mesh) -> None:
  from nlhf_jax.pipeline import pairs
  pairs.run(scfg, stage_dir, mesh)


def _eval(scfg, stage_dir: str, mesh) -> None:
  from nlhf_jax.evaluation import evaluate, report
  result = evaluate.evaluate(scfg, mesh)  # every process samples its rows
  if is_leader():
    report.write(result, scfg.output_dir)


def _train(scfg, stage_dir: str, mesh, stop_at: int | None = None) -> None:
  from nlhf_jax.config import from_config_dict
  from nlhf_jax.trainer.loop import train
  train(from_config_dict(scfg, num_devices=jax.device_count()), stage_dir, mesh, stop_at=stop_at)


def _aggregate(scfg, stage_dir: str, mesh) -> None:
  if not is_leader():
    return
  from nlhf_jax.evaluation import findings
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
  path = os.path.join(stage_dir, STAGE_CONFIG)
  with open(path + '.tmp', 'w') as f:
    f.write(scfg.to_json(indent=1, sort_keys=True))
  os.replace(path + '.tmp', path)


def _finished_config_changed(scfg, stage_dir: str) -> bool:
  path = os.path.join(stage_dir, STAGE_CONFIG)
  if not os.path.exists(path):
    return False
  with open(path) as f:
    return f.read() != scfg.to_json(indent=1, sort_keys=True)


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
                 mesh=None) -> dict[str, str]:
  """Runs the pipeline described by `p` in `workdir`; returns {stage: 'skipped' | 'ran'}.

  only: run just these stages (their inputs must exist; 'sft' also names every seed's 'seed_S/sft').
  interrupt=(stage, step): stop that stage's training after `step` as a preemption would (checkpoint, stop), then
  raise Interrupted (a half-finished stage).
  """
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  if is_leader():
    with open(os.path.join(workdir, 'pipeline.json'), 'w') as f:
      f.write(p.to_json(indent=1, sort_keys=True))
  status = {}
  for name, scfg in stages.stage_configs(p, workdir).items():
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
      with open(marker, 'w') as f:
        json.dump({'stage': name, 'seconds': round(seconds, 1), 'finished': time.strftime('%Y-%m-%d %H:%M:%S')},
                  f)
    barrier(f'pipeline marker {name}')
    log.info('stage %s: done in %.1fs', name, seconds)
    status[name] = 'ran'
  return status
