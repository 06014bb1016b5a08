"""The one error of the config package: `ConfigError`, an invalid input named by its key.

It has a module of its own so that every config module (the objectives' table, the run reader, validation) can
raise it without importing another; `nlhf_jax.config` and `nlhf_jax.config.validate` re-export it.
"""


class ConfigError(ValueError):
  """An invalid experiment configuration; the message names the key."""
