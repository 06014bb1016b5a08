"""`nlhf-eval`: the win-rate matrices and per-policy statistics of trained policies.

Any runs, by path (the tokenizer, prompt length and chat-template setting come from the reference's run):
  nlhf-eval --policy=sft=runs/sft --policy=md=runs/nash_md --judge=runs/pm --prompts=my_prompts --data_dir=data \
      [--reference=sft --split=validation --num_prompts=256 --batch_size=64 --oracle=module:function] \
      --output=runs/eval
  nlhf-eval --policy=sft=runs/sft --policy=md=runs/nash_md --judge=runs/pm --prompts=my_prompts.jsonl
  nlhf-eval --policy=sft=runs/sft --policy=md=runs/nash_md --judge=runs/qwen_instruct --judge_kind=prompted \
      [--judge_template=FILE --judge_answers=A,B --judge_max_len=1024] --prompts=my_prompts.jsonl
(`--policies=sft=runs/sft,md=runs/nash_md` is the same list in one flag.) Each policy's objective, beta, tau and
steps are read from its run (RUN/config.json), not from its name.
A pipeline's policies:
  nlhf-eval --workdir=DIR --output=DIR/eval1   # the eval config the pipeline wrote (DIR/eval/stage.json)
  nlhf-eval --workdir=DIR --config=experiments/configs/pipeline.py:demo --config.eval.seed=1 --output=DIR/eval1
  python -m nlhf_jax.cli.eval --workdir=DIR --mesh=data=2,tensor=4 --overwrite   # replaces DIR/eval's results

Every input is checked before any model is restored (evaluation/inputs.py, evaluate.prepare): the flags, the runs
(each a run of the right kind with a checkpoint; the policies and a learned judge share one tokenizer and
vocabulary; a prompted judge reads text with its own tokenizer, its template and answers checked here),
the prompts, the batch against the devices and the output folder, which must not hold an earlier evaluation's
files unless --overwrite. A sampling batch holds --batch_size rows at most, and fewer when the prompts need fewer
(the smallest multiple of the devices that split the batch). Parameters are restored params-only from the
policies' checkpoints onto the evaluation mesh, whatever mesh wrote them. Writes matrix.json, matrix.md,
matrix.png, samples.md and findings.{json,md} into --output (default ./eval, or DIR/eval with --workdir), each
file by rename; with --export_generations=FILE also every policy's sampled responses, as the JSON list that
AlpacaEval-style evaluators read (evaluation/generations.py; an existing FILE is replaced only with --overwrite).
"""
from __future__ import annotations

import json
import os

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from nlhf_jax import logs
from nlhf_jax.cli import common
from nlhf_jax.config import ConfigError, OnlineConfig


def _define_flags() -> None:
  """The command's flags, defined when it runs (so that importing this module defines none)."""
  config_flags.DEFINE_config_file('config', None, 'Optional pipeline config (the eval stage config is derived from '
                                  'it); default: DIR/eval/stage.json.', lock_config=True)
  flags.DEFINE_string('workdir', None, 'A pipeline directory (or give --policies).')
  flags.DEFINE_string('output', '', 'The folder to write the results into (default: ./eval, or DIR/eval with '
                      '--workdir).')
  flags.DEFINE_alias('out', 'output')
  flags.DEFINE_bool('overwrite', False, 'Replace the results of an earlier evaluation in --output (and an existing '
                    '--export_generations file).')
  flags.DEFINE_string('export_generations', '', 'Also write every policy\'s sampled responses to this JSON file, '
                      'as AlpacaEval-style evaluators read them: [{"instruction", "output", "generator", '
                      '"dataset"}, ...].')
  flags.DEFINE_string('mesh', '', 'Evaluation mesh, e.g. data=2,tensor=4 (default: the config\'s).')
  flags.DEFINE_string('policies', '', 'Runs to compare, NAME=RUN_DIR,NAME=RUN_DIR,...')
  flags.DEFINE_multi_string('policy', [], 'One run to compare, NAME=RUN_DIR (repeatable; with or instead of '
                            '--policies).')
  flags.DEFINE_string('reference', '', 'The policy the others are compared with (default: the first).')
  flags.DEFINE_string('judge', '', 'A preference_model (or reward_model) run that judges the pairs, or with '
                      '--judge_kind=prompted a language model run (an imported instruct model) asked which is better.')
  flags.DEFINE_string('judge_kind', '', "'prompted': --judge is a language model prompted with both responses "
                      "(both orders; its first-position rate is reported); '' (default): what the run holds.")
  flags.DEFINE_string('judge_template', '', 'The prompted judge\'s template file, with {prompt}, {response_a} and '
                      '{response_b} (default: the built-in pairwise prompt).')
  flags.DEFINE_list('judge_answers', ['A', 'B'], 'The prompted judge\'s two answers, "first better,second better"; '
                    'each one token of its tokenizer.')
  flags.DEFINE_integer('judge_max_len', OnlineConfig.judge_max_len, 'The prompted judge\'s input length in its tokens '
                       '(longer pairs have their responses shortened to fit).')
  flags.DEFINE_string('oracle', '', "A text oracle 'module:function' (prompts, a_texts, b_texts) -> P(a > b).")
  flags.DEFINE_string('prompts', '', 'The prompts: a data set (nlhf-data build --kind=prompts) with --data_dir, or '
                      'a file of prompt records (JSONL or Parquet) without it.')
  flags.DEFINE_string('data_dir', '', 'Its data directory.')
  flags.DEFINE_string('split', 'validation', 'The split of the data set to take the prompts from (train or '
                      'validation; not used with a file of prompts).')
  flags.DEFINE_integer('num_prompts', 256, 'Prompts to evaluate on (the first of the split or file).')
  flags.DEFINE_integer('samples_per_prompt', 1, 'Responses per prompt and policy.')
  flags.DEFINE_integer('max_new_tokens', 0, 'Response length (0: the reference run\'s online.sampling.max_new_tokens, '
                       'or data.response_len).')
  flags.DEFINE_float('temperature', 1.0, 'Sampling temperature.')
  flags.DEFINE_integer('batch_size', 64, 'The most rows (prompt x sample) per sampling batch: a multiple of the '
                       'devices that split the batch (mesh data x fsdp); fewer prompts take a smaller batch.')
  flags.DEFINE_integer('seed', 0, 'Seeds the samples (per policy name) and Bernoulli judgements.')
  flags.DEFINE_enum('judgement', 'expected', ['expected', 'bernoulli'], 'How a probability counts.')


def eval_config(workdir: str, pipeline_cfg=None, output: str = '', mesh: str = '') -> ml_collections.ConfigDict:
  """The eval stage config: derived from a pipeline config, or read from DIR/eval/stage.json."""
  from nlhf_jax.pipeline import stages
  if pipeline_cfg is not None:
    stages.check_moved(pipeline_cfg)
    ecfg = stages.eval_config(pipeline_cfg, os.path.abspath(workdir))
  else:
    ecfg = _recorded_eval_config(workdir)
  if output:
    ecfg.output_dir = os.path.abspath(output)
  if mesh:
    from nlhf_jax.distributed.mesh import parse_mesh
    ecfg.mesh = parse_mesh(mesh)
  return ecfg


def _recorded_eval_config(workdir: str) -> ml_collections.ConfigDict:
  """DIR/eval/stage.json (config.json in pipelines written before that name; flat sampling options, as
  pipelines written before the eval config's `sampling` section held them, moved under it), with one clear error
  for a pipeline of several seeds, whose DIR/eval pools the seeds' evaluations rather than sampling."""
  from nlhf_jax.pipeline.runner import STAGE_CONFIG
  paths = [os.path.join(workdir, 'eval', name) for name in (STAGE_CONFIG, 'config.json')]
  path = next((p for p in paths if os.path.exists(p)), None)
  if path is None:
    raise FileNotFoundError(f'{paths[0]} does not exist; run the pipeline first or pass --config=PIPELINE_CONFIG')
  from nlhf_jax.config.runs import nest_sampling
  with open(path) as f:
    ecfg = ml_collections.ConfigDict(nest_sampling(json.load(f)))
  if ecfg.get('aggregate', False):
    seeds = list(ecfg.seeds)
    raise ConfigError(f'--workdir={workdir} is a pipeline of {len(seeds)} seeds ({",".join(map(str, seeds))}), '
                      f'whose eval stage pools them; evaluate one seed with --workdir={os.path.join(workdir, "seed_S")}'
                      f' (e.g. seed_{seeds[0]}), or pool them again with nlhf-pipeline --stages=eval')
  return ecfg


RUN_FLAGS = ('reference', 'judge', 'oracle', 'prompts', 'data_dir', 'split', 'num_prompts', 'samples_per_prompt',
             'max_new_tokens', 'temperature', 'batch_size', 'seed', 'judgement', 'judge_kind', 'judge_template',
             'judge_answers', 'judge_max_len')  # with --policy; not --workdir's


def _config_from_flags() -> ml_collections.ConfigDict:
  from nlhf_jax.evaluation import from_runs
  f = flags.FLAGS
  if f.policies or f.policy:
    if f.workdir or f.config is not None:
      raise ConfigError('give either the runs (--policy=NAME=RUN ...) or a pipeline (--workdir=DIR [--config]), '
                        'not both')
    policies = from_runs.parse_policies(','.join([f.policies, *f.policy]))
    return from_runs.runs_config(policies, f.reference, f.judge, f.oracle, f.prompts, f.data_dir, f.split,
                                 f.num_prompts, f.samples_per_prompt, f.max_new_tokens, f.temperature, f.batch_size,
                                 f.seed, f.judgement, f.output, f.mesh, f.judge_kind, f.judge_template,
                                 f.judge_answers, f.judge_max_len)
  if not f.workdir:
    raise ConfigError('give the runs to evaluate (--policy=NAME=RUN ... with --judge or --oracle, and --prompts) or '
                      'a pipeline directory (--workdir=DIR)')
  given = [name for name in RUN_FLAGS if f[name].present]
  if given:
    raise ConfigError(f'--{given[0]} goes with runs given by --policy; a pipeline\'s evaluation (--workdir) takes '
                      'its settings from its config: use --config=PIPELINE_CONFIG --config.eval.KEY=VALUE')
  return eval_config(f.workdir, f.config, f.output, f.mesh)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  logs.setup()
  from nlhf_jax.evaluation import evaluate, report
  ecfg = _config_from_flags()
  report.check_output(ecfg.output_dir, flags.FLAGS.overwrite)
  export = os.path.abspath(flags.FLAGS.export_generations) if flags.FLAGS.export_generations else ''
  paths = report.write(evaluate.evaluate(ecfg, export_generations=export, overwrite=flags.FLAGS.overwrite),
                       ecfg.output_dir)
  print(f'win-rate table: {paths["matrix.md"]}\nheatmap:        {paths["matrix.png"]}\n'
        f'findings:       {paths["findings.md"]}' + (f'\ngenerations:    {export}' if export else ''), flush=True)


def run() -> None:
  _define_flags()
  common.run(main)


if __name__ == '__main__':
  run()
