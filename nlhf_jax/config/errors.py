"""The one error of the config package: `ConfigError`, an invalid input named by its key, and `require`, the check
that raises it.

It has a module of its own so that every config module (the objectives' table, the run reader, building, the
value and mesh checks) can raise it without importing another; `nlhf_jax.config` re-exports `ConfigError`.
"""


class ConfigError(ValueError):
  """An invalid experiment configuration; the message names the key."""


def require(ok: bool, message: str) -> None:
  """Raises ConfigError(`message`) unless `ok`."""
  if not ok:
    raise ConfigError(message)
