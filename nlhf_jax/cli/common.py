"""What every absl command of the project shares: mistakes in the input end in one clear line, not a traceback.

`run(main)` is `absl.app.run(main)` with two differences:
- a config file that does not exist stops before flag parsing with one line naming the path as given, the path it
  was looked for at (relative to the current folder) and where the repository's configs are (experiments/configs/
  of the checkout, with the same file there when there is one); a misspelled `--config.x=y` override stops with
  one line naming the override, the group that lacks the key and the closest key ("did you mean"), or the group's
  keys when none is close; other config-loading failures are one line too (exit status 2 for all of these);
- the errors that the project's own checks raise (invalid config, bad data, unusable checkpoints, missing files,
  a non-finite loss) are printed as `error: MESSAGE` with exit status 1. Set NLHF_TRACEBACK=1 to see the traceback.
Any other exception is a bug and keeps its traceback.

`guard(main, argv)` gives argparse commands (nlhf-data, nlhf-tokenizer) the same second rule: it returns main's
exit status, or 1 after printing `error: MESSAGE` for a user error.

A message may go on over indented lines (e.g. the first bad lines of a data file); it is still one `error:`.
"""
from __future__ import annotations

import difflib
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from absl import app, flags

from nlhf_jax.config import runs
from nlhf_jax.config.building import moved

TRACEBACK_ENV = 'NLHF_TRACEBACK'


def user_errors() -> tuple[type[BaseException], ...]:
  """Exceptions whose message is the whole story (each names the problem and the fix)."""
  from nlhf_jax.config import ConfigError
  from nlhf_jax.data.records import DataError
  from nlhf_jax.data.tokenizer import TokenizerError
  from nlhf_jax.models.hf.config import HFFormatError
  from nlhf_jax.models.hf.safetensors import SafetensorsError
  from nlhf_jax.outputs import OutputError
  from nlhf_jax.training.checkpointing import CheckpointError
  return (ConfigError, DataError, TokenizerError, CheckpointError, HFFormatError, SafetensorsError,
          FileNotFoundError, NotADirectoryError, FloatingPointError, OutputError)


def _message(e: BaseException) -> str:
  if isinstance(e, AttributeError) and e.args and isinstance(e.args[0], KeyError):  # ConfigDict wraps its KeyError
    e = e.args[0]
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


def checkout_configs() -> Path | None:
  """experiments/configs/ of the checkout this package runs from (None for an installed package without one)."""
  configs = Path(__file__).resolve().parents[2] / 'experiments' / 'configs'
  return configs if configs.is_dir() else None


def missing_config_message(value: str, cwd: str | None = None) -> str:
  """The error for `--config=VALUE` whose file (the part before ':') does not exist."""
  path, _, arg = value.partition(':')
  cwd = cwd or os.getcwd()
  tried = os.path.normpath(os.path.join(cwd, path))
  message = f'config file {path} does not exist'
  if not os.path.isabs(path):
    message += f' (looked for {tried}, relative to the current folder)'
  configs = checkout_configs()
  if configs is None:
    return (f"{message}; the project's configs are in experiments/configs/ of the repository checkout: run from "
            "the checkout or give the file's full path")
  same = configs / os.path.basename(path)
  if same.is_file():
    return f"{message}; the project's configs are in {configs}/, e.g. --config={same}{':' + arg if arg else ''}"
  names = ', '.join(sorted(p.name for p in configs.glob('*.py') if not p.name.startswith('_')))
  return f"{message}; the project's configs are in {configs}/ ({names})"


def _config_file_flags() -> list[str]:
  """The names of the flags defined by config_flags.DEFINE_config_file."""
  from ml_collections.config_flags.config_flags import ConfigFileFlagParser
  return [name for name, flag in flags.FLAGS._flags().items()  # pylint: disable=protected-access
          if isinstance(flag.parser, ConfigFileFlagParser) and name == flag.name]


def _flag_values(argv: Sequence[str], name: str) -> list[str]:
  """The values given to --NAME (as --NAME=V or --NAME V) on the command line."""
  out = []
  for i, arg in enumerate(argv):
    for prefix in (f'--{name}', f'-{name}'):
      if arg.startswith(prefix + '='):
        out.append(arg[len(prefix) + 1:])
      elif arg == prefix and i + 1 < len(argv):
        out.append(argv[i + 1])
  return out


def _overrides(argv: Sequence[str], name: str) -> list[tuple[str, list[str]]]:
  """(the argument as typed, the dotted path) of every --NAME.a.b[=V] override (and --noNAME.a.b)."""
  out = []
  for arg in argv:
    for prefix in (f'--{name}.', f'-{name}.', f'--no{name}.', f'-no{name}.'):
      if arg.startswith(prefix):
        out.append((arg, arg[len(prefix):].split('=', 1)[0].split('.')))
        break
  return out


def _is_group(node) -> bool:
  return hasattr(node, 'keys') and callable(node.keys)


def unknown_key_message(config, override: str, path: Sequence[str], name: str = 'config') -> str | None:
  """The error for an override whose dotted `path` names no field of `config` (None when every part exists)."""
  node = config
  for i, part in enumerate(path):
    group = '.'.join([name, *path[:i]])
    if not _is_group(node):
      return f'{override}: {group} is a {type(node).__name__} ({node!r:.40}), not a group of fields'
    keys = [str(k) for k in node.keys()]
    if part not in keys and part in runs.SAMPLING_KEYS and 'sampling' in keys and i == len(path) - 1:
      at = ''.join(f'{p}.' for p in path[:i])  # a sampling option where it was before the `sampling` sections
      return f'{override}: {moved(f"{at}{part}", f"{at}sampling.{part}")}'
    if part not in keys:
      close = difflib.get_close_matches(part, keys, n=1)
      hint = f'did you mean {close[0]!r}?' if close else f'its fields are: {", ".join(sorted(keys))}'
      return f'{override}: {group} has no field {part!r}; {hint}'
    node = node[part]
  return None


def override_error(argv: Sequence[str], e: BaseException) -> str:
  """The one-line error for a config override that flag parsing rejected with `e`."""
  for name in _config_file_flags():
    values = _flag_values(argv, name)
    if not values:
      continue
    try:
      config = flags.FLAGS[name].parser.parse(values[-1])
    except Exception:  # pylint: disable=broad-except  # the config itself is broken: say what parsing said
      break
    for override, path in _overrides(argv, name):
      message = unknown_key_message(config, override, path, name)
      if message:
        return message
  return 'cannot build the config from the command line: ' + ' '.join(_message(e).split())


def _check_config_files(argv: Sequence[str]) -> None:
  if os.environ.get(TRACEBACK_ENV):
    return
  for name in _config_file_flags():
    for value in _flag_values(argv, name):
      if value and not os.path.isfile(value.partition(':')[0]):
        _fail(missing_config_message(value), 2)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with config-loading errors reported in one line."""
  _check_config_files(argv)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(f'{_without_traceback(str(e))}\nPass --helpshort or --helpfull to see the flags.', 1)
  except (KeyError, AttributeError, OSError, ValueError, TypeError, SyntaxError) as e:
    if os.environ.get(TRACEBACK_ENV):
      raise
    _fail(override_error(argv, e), 2)


def _load_failure(text: str) -> str:
  """ml_collections' multi-line 'Failed loading config file <module name>' report, as one line."""
  text = text.split('failure to load: ')[-1].strip()
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  if lines and lines[0].startswith('Failed loading config file') and len(lines) >= 3:
    return f'{lines[2]}: {lines[-1]}'  # the path tried, then why
  return ' '.join(lines)


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
      _fail(f'cannot load the config: {_load_failure(str(e))}', 2)
  app.run(guarded, flags_parser=parse_flags)


def guard(main: Callable[..., int], *args) -> int:
  """main(*args)'s exit status; a user error (see `user_errors`) is printed as `error: MESSAGE` and gives 1
  (with its traceback instead when NLHF_TRACEBACK=1)."""
  if os.environ.get(TRACEBACK_ENV):
    return main(*args)
  try:
    return main(*args)
  except user_errors() as e:
    print(f'error: {_message(e)}', file=sys.stderr, flush=True)
    return 1
  except OSError as e:  # unreadable input, an unwritable data_dir
    print(f'error: {e}', file=sys.stderr, flush=True)
    return 1


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
