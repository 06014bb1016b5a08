"""The train state is built sharded from the start, with the shardings that the rule table implies."""
import jax
import jax.extend
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from helpers import mesh, tiny_config
from nlhf_jax.distributed import LOGICAL_AXIS_RULES, logical_to_spec
from nlhf_jax.models import Transformer
from nlhf_jax.training import init, optim

# What the table implies for each parameter of the tiny model (by its last path key).
EXPECTED = {
    'embed': P('tensor', 'fsdp'),            # (vocab, embed)
    'q': P('fsdp', 'tensor', None), 'k': P('fsdp', 'tensor', None), 'v': P('fsdp', 'tensor', None),
    'o': P('tensor', None, 'fsdp'),          # (heads, head_dim, embed)
    'gate': P('fsdp', 'tensor'), 'up': P('fsdp', 'tensor'),
    'down': P('tensor', 'fsdp'),
    'scale': P(None),
}


def test_rule_table_maps_logical_names():
  assert logical_to_spec(('batch', 'length', 'embed')) == P(('data', 'fsdp'), None, 'fsdp')
  assert LOGICAL_AXIS_RULES['heads'] == 'tensor'


@pytest.mark.parametrize('optimizer', ['adamw', 'adafactor'])
def test_params_and_optimizer_state_have_rule_table_shardings(optimizer):
  cfg = tiny_config(**{'mesh.data': 1, 'mesh.fsdp': 2, 'mesh.tensor': 4, 'optim.name': optimizer})
  m = mesh(1, 2, 4)
  tx = optim.make_optimizer(cfg.optim, 10)
  _, state, _ = init.create_state(lambda rngs: Transformer(cfg.model, rngs), tx, m, seed=0)
  param_paths = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state.params)[0]:
    expected = NamedSharding(m, EXPECTED[path[-1].key])
    assert leaf.sharding.is_equivalent_to(expected, leaf.ndim), (path, leaf.sharding)
    param_paths[tuple(k.key for k in path)] = (leaf.shape, expected)
  mirrored = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]:
    keys = tuple(getattr(k, 'key', None) for k in path)
    match = [v for p, v in param_paths.items() if keys[-len(p):] == p and v[0] == leaf.shape]
    expected = match[0][1] if match else NamedSharding(m, P())
    mirrored += bool(match)
    assert leaf.sharding.is_equivalent_to(expected, leaf.ndim), (path, leaf.sharding, expected)
  # Adam's two moments mirror every parameter; Adafactor keeps full moments only for small parameters.
  assert mirrored >= (2 * len(param_paths) if optimizer == 'adamw' else 1)
  assert state.step.sharding.is_fully_replicated and state.rng.sharding.is_fully_replicated


def test_no_parameter_is_materialised_whole_on_one_device():
  cfg = tiny_config(**{'mesh.data': 1, 'mesh.fsdp': 8, 'mesh.tensor': 1})
  m = mesh(1, 8, 1)
  _, state, _ = init.create_state(lambda rngs: Transformer(cfg.model, rngs), optim.make_optimizer(cfg.optim, 10),
                                  m, seed=0)
  big = state.params['embed']
  shard_shapes = {s.data.shape for s in big.addressable_shards}
  assert shard_shapes == {(cfg.model.vocab_size, cfg.model.d_model // 8)}


def test_sharded_init_never_holds_the_whole_state_on_a_device():
  """The compiled init (jit with out_shardings) needs, per device, about 1/8 of the state on (fsdp=8): the
  parameters and optimizer state are generated shard by shard, never whole and then split."""
  cfg = tiny_config(**{'mesh.data': 1, 'mesh.fsdp': 8, 'mesh.tensor': 1, 'model.d_model': 256,
                       'model.mlp_dim': 1024, 'model.vocab_size': 2048, 'model.num_heads': 4, 'model.head_dim': 64})
  m = mesh(1, 8, 1)
  _, init_fn, shardings = init.state_initializer(lambda rngs: Transformer(cfg.model, rngs),
                                                 optim.make_optimizer(cfg.optim, 10), m)
  whole = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(jax.eval_shape(init_fn, 0)))
  mem = jax.jit(init_fn, out_shardings=shardings).lower(0).compile().memory_analysis()
  per_device = mem.output_size_in_bytes + mem.temp_size_in_bytes
  assert per_device < whole / 4, (per_device, whole)


def _constraints(jaxpr):
  """(shape, PartitionSpec) of every sharding constraint in a jaxpr, its inner jaxprs' included."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'sharding_constraint':
      yield eqn.invars[0].aval.shape, eqn.params['sharding'].spec
    for value in eqn.params.values():
      for sub in value if isinstance(value, (list, tuple)) else (value,):
        inner = getattr(sub, 'jaxpr', sub)
        if isinstance(inner, jax.extend.core.Jaxpr):
          yield from _constraints(inner)


@pytest.mark.parametrize('rows', [8, 6])
def test_a_decoded_positions_residual_stream_is_split_by_rows_over_tensor(devices, rows):
  """One token a row over a cache, on data=2 x tensor=2: the residual stream between the layers is split by rows
  over 'tensor' as well (each device normalizes and adds its share), the sublayers' inputs are whole rows; a
  prefill, or rows that do not divide into the four shards, keep the stream's rows over 'data' only."""
  from flax import nnx

  from nlhf_jax.models.transformer import init_cache
  cfg = tiny_config().model
  model = Transformer(cfg, nnx.Rngs(0))
  m = mesh(data=2, tensor=2)

  def residual_specs(length):
    cache = init_cache(cfg, rows, 8)
    tokens, mask = jnp.ones((rows, length), jnp.int32), jnp.ones((rows, length), bool)
    with jax.sharding.use_abstract_mesh(m.abstract_mesh):
      jaxpr = jax.make_jaxpr(lambda: model.hidden(tokens, mask, None, cache, 0))()
    rows_axes = lambda a: (a,) if isinstance(a, str) else tuple(a or ())
    return [rows_axes(spec[0]) for shape, spec in _constraints(jaxpr.jaxpr) if shape == (rows, length, cfg.d_model)]
  between_layers = 1 + cfg.num_layers  # the embeddings and each block's output
  decoded = residual_specs(1)
  if rows % 4 == 0:
    assert decoded.count(('data', 'tensor')) == between_layers and decoded.count(('data',)) == 2 * cfg.num_layers
  else:
    assert decoded == [('data',)] * (between_layers + 2 * cfg.num_layers)
  assert set(residual_specs(3)) == {('data',)}
