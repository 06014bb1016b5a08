"""Console logging for the command-line tools: this library at INFO, dependencies (Orbax, absl) at WARNING."""
import logging

from absl import logging as absl_logging


def setup(level: int = logging.INFO) -> None:
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger('nlhf_jax').setLevel(level)
