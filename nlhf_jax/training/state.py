"""The train state: one pytree of arrays, checkpointed whole."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
  step: jax.Array        # int32 scalar: number of updates applied
  params: Any            # pure nested dict of float32 arrays
  opt_state: Any         # optax state (mirrors params)
  rng: jax.Array         # uint32 raw key data; the step's key is fold_in(rng, step)
  extras: Any = None     # objective-specific arrays (e.g. EMA parameters), or None

  def step_key(self) -> jax.Array:
    return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)
