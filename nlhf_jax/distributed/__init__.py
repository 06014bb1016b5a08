"""Meshes, logical sharding rules and multi-process data."""
from nlhf_jax.distributed.mesh import MESH_AXES, make_mesh
from nlhf_jax.distributed.multihost import global_batch, initialize, local_batch_rows
from nlhf_jax.distributed.sharding import (LOGICAL_AXIS_RULES, batch_spec, like_params, logical_to_spec, named,
                                           param_specs)

__all__ = [
    'MESH_AXES',
    'make_mesh',
    'global_batch',
    'initialize',
    'local_batch_rows',
    'LOGICAL_AXIS_RULES',
    'batch_spec',
    'like_params',
    'logical_to_spec',
    'named',
    'param_specs',
]
