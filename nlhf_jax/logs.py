"""Console logging for the command-line tools: this library at INFO, dependencies (Orbax, absl) at WARNING; and
`progress_bar`, a tqdm bar where a person waits on a long loop (only on a terminal, only on process 0)."""
import logging
import sys
from typing import Iterable

from absl import logging as absl_logging
from tqdm import tqdm


def setup(level: int = logging.INFO) -> None:
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger('nlhf_jax').setLevel(level)


def progress_bar(iterable: Iterable, desc: str, total: int | None = None, unit: str = 'it') -> Iterable:
  """`iterable` with a tqdm bar on stderr when it is a terminal (process 0 only); the iterable itself otherwise."""
  import jax
  if jax.process_index() != 0 or not sys.stderr.isatty():
    return iterable
  return tqdm(iterable, desc=desc, total=total, unit=unit, dynamic_ncols=True, leave=False)
