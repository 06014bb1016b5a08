"""Meshes, logical sharding rules and multi-process data."""
from nlhf_jax.distributed.mesh import MESH_AXES, make_mesh
from nlhf_jax.distributed.multihost import (barrier, global_batch, initialize, is_leader, local_batch_rows,
                                            local_rows_of, resolve_launch, to_host)
from nlhf_jax.distributed.sharding import (LOGICAL_AXIS_RULES, batch_spec, constrain_activations, like_params,
                                           logical_to_spec, named, param_specs, within_mesh)

__all__ = [
    'MESH_AXES',
    'make_mesh',
    'barrier',
    'global_batch',
    'is_leader',
    'local_rows_of',
    'to_host',
    'initialize',
    'resolve_launch',
    'local_batch_rows',
    'LOGICAL_AXIS_RULES',
    'batch_spec',
    'constrain_activations',
    'like_params',
    'logical_to_spec',
    'named',
    'param_specs',
    'within_mesh',
]
