"""What every absl command of the project shares: mistakes in the input end in one clear line, not a traceback.

`run(main)` is `absl.app.run(main)` with two differences:
- a config file that cannot be loaded or a misspelled `--config.x=y` override stops with `error: ...` (what is
  wrong, and ml_collections' "did you mean"), where absl would print a long traceback from inside flag parsing;
- the errors that the project's own checks raise (invalid config, bad data, unusable checkpoints, missing files,
  a non-finite loss) are printed as `error: MESSAGE` with exit status 1. Set NLHF_TRACEBACK=1 to see the traceback.
Any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import os
import sys
from typing import Callable

from absl import app, flags

TRACEBACK_ENV = 'NLHF_TRACEBACK'


def user_errors() -> tuple[type[BaseException], ...]:
  """Exceptions whose message is the whole story (each names the problem and the fix)."""
  from nlhf_jax.config import ConfigError
  from nlhf_jax.data.records import DataError
  from nlhf_jax.data.tokenizer import TokenizerError
  from nlhf_jax.models.hf.config import HFFormatError
  from nlhf_jax.models.hf.safetensors import SafetensorsError
  from nlhf_jax.training.checkpointing import CheckpointError
  return (ConfigError, DataError, TokenizerError, CheckpointError, HFFormatError, SafetensorsError,
          FileNotFoundError, NotADirectoryError, FloatingPointError)


def _message(e: BaseException) -> str:
  text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
  cause = e.__cause__ or e.__context__
  if cause is not None and 'earlier failure' in text:  # ml_collections hides the real reason in the chain
    text = f'{text.split(" because")[0]}: {_message(cause)}'
  return str(text)


def _without_traceback(text: str) -> str:
  """ml_collections puts the config file's traceback into its flag error: keep the first and the last line."""
  if 'Traceback (most recent call last)' not in text or os.environ.get(TRACEBACK_ENV):
    return text
  lines = [line for line in text.splitlines() if line.strip()]
  return f'{lines[0]} {lines[-1]}'


def _fail(message: str, status: int):
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(status)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with config-loading errors reported in one line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(f'{_without_traceback(str(e))}\nPass --helpshort or --helpfull to see the flags.', 1)
  except (KeyError, AttributeError, OSError, ValueError, TypeError, SyntaxError) as e:
    if os.environ.get(TRACEBACK_ENV):
      raise
    _fail(f'cannot build the config from the command line: {_message(e)}', 2)


def run(main: Callable[[list[str]], None]) -> None:
  def guarded(argv):
    if os.environ.get(TRACEBACK_ENV):
      return main(argv)
    try:
      return main(argv)
    except user_errors() as e:
      _fail(_message(e), 1)
    except OSError as e:  # a config file that failed to load is reported when the config is first read
      if 'Configuration is not available' not in str(e):
        raise
      _fail(f'cannot load the config: {str(e).split("failure to load: ")[-1].strip()}', 2)
  app.run(guarded, flags_parser=parse_flags)


def define_launch_flags() -> None:
  """--coordinator_address, --num_processes, --process_id, for commands that run on several processes (the same
  meaning as nlhf-train's; docs/launching.md)."""
  flags.DEFINE_string('coordinator_address', None, 'Multi-process: HOST:PORT of process 0 (overrides '
                      'JAX_COORDINATOR_ADDRESS).')
  flags.DEFINE_integer('num_processes', None, 'Multi-process: number of processes.')
  flags.DEFINE_integer('process_id', None, 'Multi-process: this process, 0 .. num_processes - 1.')


def launch() -> None:
  """jax.distributed.initialize when the launch flags or the environment (JAX_COORDINATOR_ADDRESS, ...) ask
  for several processes; nothing otherwise."""
  from nlhf_jax.config import DistributedConfig
  from nlhf_jax.distributed import initialize, resolve_launch
  f = flags.FLAGS
  given = {k: getattr(f, k) for k in ('coordinator_address', 'num_processes', 'process_id')}
  initialize(resolve_launch(DistributedConfig(), given))
