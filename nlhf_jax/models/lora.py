"""LoRA adapters on the Transformer's projections, built with qwix (`qwix.LoraProvider`, `qwix.apply_lora_to_model`).

An adapted weight W computes  x W + (alpha / rank) * (x A) B  with two `nnx.LoRAParam` adapters stored next to W
in its module, named after it:

- `<w>_lora_a`: W's contracted dimensions, then the rank (q [D, H, K] -> q_lora_a [D, r]; o [H, K, D] ->
  o_lora_a [H, K, r]; gate/up [D, F] -> [D, r]; down [F, D] -> [F, r]);
- `<w>_lora_b`: the rank, then W's other dimensions (q_lora_b [r, H, K], o_lora_b [r, D], gate_lora_b [r, F]);
- in a scanned stack (config.model.scan_layers) both also carry W's leading layer axis.

A starts he-uniform and B at zero (qwix's initialisers), so a fresh adapted model computes exactly what its base
computes. Adapters are float32 whatever the parameters' dtype; an adapted product is rounded back to the dtype
of the product it adapts, so bfloat16 compute stays bfloat16. Their `logical_axes` are W's with None (replicated)
on the rank axis, so the rule table (nlhf_jax/distributed/sharding.py) shards A like W's contracted dimensions
and B like its other ones.

Which weights: every projection (q, k, v, o of Attention; gate, up, down of GatedMLP) of a module whose path,
relative to the Transformer, fully matches the `targets` regex. The paths are those of unrolled layers
('layer_0/attn', 'layer_3/mlp': config/validate.lora_modules) also for a scanned stack, which needs the same
modules selected in every layer. The embedding and the unembedding are never adapted. config validation refuses
a regex that selects nothing before any model is built (config/validate.check_lora_targets); here the same cases
raise ConfigError too.

How qwix runs it: the adapted Transformer is an instance of a subclass of the model's own class (isinstance holds)
whose `hidden` method is intercepted. While `hidden` runs, in the calling thread, jnp.einsum, jnp.dot and
jax.lax.dot_general go to the provider, which adds the low-rank term to a product whose right operand is a
parameter of a module that owns adapters (qwix finds the parameter by following the traced value back through
unary ops such as astype). `__call__`, the sampler's `hidden`/`logits` and the judges' `backbone.hidden` all go
through `hidden`. The class and the adapters live in the graphdef and the state, so nnx.split / nnx.merge,
jax.jit, nnx.eval_shape and the layer scan / remat inside `hidden` keep them. Requirements on the model code: a
projection is written with jnp.einsum or jnp.dot (`x @ w` runs inside jnp.matmul's own jit, where qwix cannot
create or find adapters), and the adapted model is run under a trace (jax.jit, as everywhere here) unless compute
is float32 (eagerly, a bfloat16 cast cut the link between a weight and its use).

Parameters are pure dicts (nnx.to_pure_dict) in which the adapters are the leaves named `*_lora_a` / `*_lora_b`:
`split_adapters` / `combine` move between the whole tree and (adapters, base), so that a train state holds the
adapters only while the base stays a frozen input; `merge_adapters` folds the adapters into base-shaped weights
(export); `base_model` is the model without adapters, whose graphdef runs the same base parameters (the
reference policy: nothing is copied); `unrolled` is a scanned adapted model with its layers (and adapters) split,
the sampler's decode form on GPU.
"""
from __future__ import annotations

import dataclasses
import re
import warnings
from typing import Any, Iterable, TypeVar

import jax
import jax.numpy as jnp
import qwix
from flax import errors as flax_errors
from flax import nnx, traverse_util
from jax.sharding import Mesh, NamedSharding

from nlhf_jax.config import ConfigError, LoraConfig
from nlhf_jax.distributed.sharding import logical_to_spec
from nlhf_jax.models import transformer as transformer_lib

# qwix 0.1.8 uses Flax APIs that Flax 0.12 deprecates (Variable.value, VariableState, iter_modules), on every call.
warnings.filterwarnings('ignore', category=DeprecationWarning, module=r'qwix\.')

A_SUFFIX, B_SUFFIX = '_lora_a', '_lora_b'
INTERCEPTED_METHOD = 'hidden'
_LAYER = re.compile(r'layer_(\d+)')

M = TypeVar('M', bound=nnx.Module)
Path = tuple[str, ...]


def enabled(lora_cfg: LoraConfig | None) -> bool:
  return lora_cfg is not None and lora_cfg.rank > 0


class _Provider(qwix.LoraProvider):
  """qwix's LoRA provider, each adapted product cast back to the dtype of the product it adapts."""

  def einsum(self, einsum_str, *operands, **kwargs):
    dtype = kwargs.get('preferred_element_type') or jnp.result_type(*operands)
    return super().einsum(einsum_str, *operands, **kwargs).astype(dtype)

  def dot_general(self, lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kwargs):
    dtype = preferred_element_type or jnp.result_type(lhs, rhs)
    out = super().dot_general(lhs, rhs, dimension_numbers, precision, preferred_element_type, **kwargs)
    return out.astype(dtype)


def _provider(module_path: str, lora_cfg: LoraConfig) -> _Provider:
  return _Provider(module_path=module_path, rank=lora_cfg.rank, alpha=float(lora_cfg.alpha))


# ----------------------------------------------------------------------------------------------- the model


def backbone_of(model: nnx.Module) -> transformer_lib.Transformer:
  """The Transformer that carries the adapters: the model itself, or a judge's `backbone`."""
  if isinstance(model, transformer_lib.Transformer):
    return model
  backbone = getattr(model, 'backbone', None)
  if isinstance(backbone, transformer_lib.Transformer):
    return backbone
  raise TypeError(f'LoRA applies to a Transformer or to a model with a Transformer `backbone`, not {type(model)}')


def is_adapted(model: nnx.Module) -> bool:
  return hasattr(type(backbone_of(model)), '_unquantized_type')


def apply_lora(model: M, lora_cfg: LoraConfig | None, rngs: nnx.Rngs, mesh: Mesh | None = None) -> M:
  """`model` (a Transformer, or a judge whose `backbone` is one) with fresh adapters on the projections that
  `lora_cfg.targets` selects; `model` itself when LoRA is off (rank 0).

  The result shares its base arrays with `model` (nothing is copied). Adapters are placed on `mesh` by the rule
  table (default: the mesh of the base parameters when they are sharded arrays; under a trace they are left to
  the caller's out_shardings). Works eagerly, under nnx.eval_shape and inside jax.jit. ConfigError when `targets`
  selects no projection or, with scan_layers, different projections in different layers.
  """
  if not enabled(lora_cfg):
    return model
  backbone = backbone_of(model)
  if is_adapted(backbone):
    raise ValueError('the model already has LoRA adapters')
  adapters = _fresh_adapters(backbone, lora_cfg, rngs.params(), mesh or _mesh_of(backbone))
  adapted = _intercepted(backbone, lora_cfg, {path[:-1] for path in adapters})
  adapted.lora_config = lora_cfg  # static (in the graphdef): what `unrolled` intercepts its twin with
  for path, value in adapters.items():
    axes = _axes(backbone, path, adapters)
    setattr(_module_at(adapted, path[:-1]), path[-1], nnx.LoRAParam(value, logical_axes=axes))
  if backbone is model:
    return adapted
  out = nnx.clone(model)
  out.backbone = adapted
  return out


def base_model(model: M) -> M:
  """`model` without its adapters: an instance of the model's own class (the graphdef of the model as built)
  holding the same base arrays, e.g. the reference policy; nnx.merge(nnx.graphdef(base_model(adapted)), base)
  runs `base` unadapted. `model` itself when it has no adapters."""
  if not is_adapted(model):
    return model
  backbone = backbone_of(model)
  cls = type(backbone)._unquantized_type if backbone is model else type(model)
  plain = nnx.eval_shape(lambda: cls(backbone.cfg, nnx.Rngs(0)))
  nnx.update(plain, nnx.state(model, nnx.Not(nnx.LoRAParam)))
  return plain


def unrolled(model: M) -> M:
  """A scanned adapted Transformer as its unrolled twin (the sampler's decode form on GPU): the base as
  `transformer.unrolled` makes it, each adapter split per layer next to its weight, under the same interception
  (the rank and alpha `apply_lora` was given, the modules that own adapters). Computes the same function; the
  split is a copy, made once (under jit: slices of the stack)."""
  backbone = backbone_of(model)
  if backbone is not model or not is_adapted(model) or not _scanned(model.cfg):
    raise ValueError('lora.unrolled takes an adapted Transformer with scanned layers')
  plain = transformer_lib.unrolled(base_model(model))
  flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.LoRAParam)))  # all in the stack
  per_layer = {(f'layer_{i}',) + path[1:]: value[i]
               for path, value in flat.items() for i in range(model.cfg.num_layers)}
  adapted = _intercepted(plain, model.lora_config, {path[:-1] for path in per_layer})
  adapted.lora_config = model.lora_config
  for path, value in per_layer.items():
    setattr(_module_at(adapted, path[:-1]), path[-1], nnx.LoRAParam(value, logical_axes=_axes(plain, path, per_layer)))
  return adapted


def _example_inputs() -> tuple[jax.Array, jax.Array]:
  """What `hidden` runs on to find the projections (any tokens do: every layer runs every projection)."""
  return jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2), bool)


def _unrolled(cfg: Any) -> Any:
  """The config of the same model with unrolled layers and no remat, where qwix can create adapters."""
  changes = {k: v for k, v in (('scan_layers', False), ('remat', 'none')) if hasattr(cfg, k)}
  return dataclasses.replace(cfg, **changes)


def _scanned(cfg: Any) -> bool:
  return bool(getattr(cfg, 'scan_layers', False))


def _fresh_adapters(backbone: nnx.Module, lora_cfg: LoraConfig, key: jax.Array, mesh: Mesh | None
                    ) -> dict[Path, jax.Array]:
  """{path of an adapter in `backbone`'s layout: float32 value}, created by qwix on an unrolled twin of the model
  (built and run inside jax.jit; everything but the adapters is dead code there)."""
  cls, cfg = type(backbone), backbone.cfg
  provider = _provider(lora_cfg.targets, lora_cfg)

  def build(key):
    twin = cls(_unrolled(cfg), nnx.Rngs(0))
    twin = qwix.apply_lora_to_model(twin, provider, *_example_inputs(), methods=(INTERCEPTED_METHOD,),
                                    rngs=nnx.Rngs(key))
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(twin, nnx.LoRAParam)))
    flat = {path: value.astype(jnp.float32) for path, value in flat.items()}
    return _stack_layers(flat, cfg.num_layers) if _scanned(cfg) else flat

  try:
    if mesh is None:
      adapters = jax.jit(build)(key)
    else:
      shapes = jax.eval_shape(build, key)
      shardings = {path: NamedSharding(mesh, logical_to_spec(_axes(backbone, path, shapes))) for path in shapes}
      adapters = jax.jit(build, out_shardings=shardings)(key)
  except flax_errors.TraceContextError as e:
    raise ValueError('qwix could not create an adapter inside a nested jit: a targeted projection is written '
                     'as x @ w (jnp.matmul); write it with jnp.einsum or jnp.dot') from e
  if not adapters:
    raise ConfigError(f'config.model.lora.targets={lora_cfg.targets!r} selects no projection; module paths look '
                      "like 'layer_0/attn', 'layer_0/mlp' (with scan_layers too)")
  return adapters


def _stack_layers(flat: dict[Path, jax.Array], num_layers: int) -> dict[Path, jax.Array]:
  """The adapters of layer_0 ... layer_{L-1} stacked into the scanned stack's layout (layer axis first)."""
  stack = getattr(transformer_lib, 'STACK', 'layers')
  by_rest: dict[Path, dict[int, jax.Array]] = {}
  for path, value in flat.items():
    match = _LAYER.fullmatch(path[0])
    if match is None:
      raise ValueError(f'adapter {"/".join(path)} is outside the layers, which a scanned stack cannot hold')
    by_rest.setdefault(path[1:], {})[int(match.group(1))] = value
  for rest, layers in by_rest.items():
    if sorted(layers) != list(range(num_layers)):
      raise ConfigError(f'with scan_layers every layer needs the same adapters, but config.model.lora.targets '
                        f'adapts {"/".join(rest)} in layers {sorted(layers)} only')
  return {(stack,) + rest: jnp.stack([layers[i] for i in range(num_layers)]) for rest, layers in by_rest.items()}


def _intercepted(backbone: M, lora_cfg: LoraConfig, modules: Iterable[Path]) -> M:
  """A clone of `backbone` whose `hidden` qwix intercepts, with a rule matching exactly the modules that own
  adapters (so that nothing tries to create an adapter at run time)."""
  pattern = '|'.join(sorted(re.escape('/'.join(path)) for path in modules))
  return qwix.apply_lora_to_model(backbone, _provider(pattern, lora_cfg), *_example_inputs(),
                                  methods=(INTERCEPTED_METHOD,), rngs=nnx.Rngs(0), skip_nnx_init=True)


def _module_at(model: nnx.Module, path: Path) -> nnx.Module:
  for key in path:
    model = getattr(model, key)
  return model


def _weight_name(adapter: str) -> str:
  for suffix in (A_SUFFIX, B_SUFFIX):
    if adapter.endswith(suffix):
      return adapter[:-len(suffix)]
  raise ValueError(f'{adapter} is not an adapter name')


def _axes(backbone: nnx.Module, path: Path, shapes: dict[Path, Any]) -> tuple[str | None, ...]:
  """The logical axes of the adapter at `path` from those of its weight (see the module docstring); `shapes` holds
  the adapters' shapes."""
  weight_path = path[:-1] + (_weight_name(path[-1]),)
  weight = getattr(_module_at(backbone, path[:-1]), weight_path[-1])
  a_path, b_path = (weight_path[:-1] + (weight_path[-1] + s,) for s in (A_SUFFIX, B_SUFFIX))
  lead, contracted = _layout(weight.shape, shapes[a_path].shape, shapes[b_path].shape)
  axes = tuple(weight.get_metadata()['logical_axes'])
  if path == a_path:
    return axes[:lead + contracted] + (None,)
  return axes[:lead] + (None,) + axes[lead + contracted:]


def _layout(w_shape, a_shape, b_shape) -> tuple[int, int]:
  """(lead, contracted): how many leading dimensions W shares with both adapters (a scanned stack's layer axis)
  and how many of the rest A holds, for A [*lead, *contracted, r], B [*lead, r, *other], W [*lead, *contracted,
  *other]; ValueError when the shapes do not fit so."""
  w_shape, a_shape, b_shape = tuple(w_shape), tuple(a_shape), tuple(b_shape)
  lead = len(a_shape) + len(b_shape) - 2 - len(w_shape)
  fits = (lead >= 0 and a_shape[:lead] == b_shape[:lead] and a_shape[-1] == b_shape[lead]
          and w_shape == a_shape[:-1] + b_shape[lead + 1:])
  if not fits:
    raise ValueError(f'adapters {a_shape} and {b_shape} do not fit a weight of shape {w_shape} laid out '
                     '(contracted dimensions, other dimensions)')
  return lead, len(a_shape) - 1 - lead


def _mesh_of(model: nnx.Module) -> Mesh | None:
  for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)):
    if isinstance(leaf, jax.core.Tracer):
      return None
    sharding = getattr(leaf, 'sharding', None)
    if isinstance(sharding, NamedSharding):
      return sharding.mesh
  return None


# ------------------------------------------------------------------------------------------------ params


def is_adapter(path: Iterable[Any]) -> bool:
  """Whether a key path (of strings, or jax key entries) names an adapter leaf."""
  last = list(path)[-1]
  name = getattr(last, 'key', getattr(last, 'name', last))
  return isinstance(name, str) and name.endswith((A_SUFFIX, B_SUFFIX))


def split_adapters(params: dict, extra: Iterable[str] = ()) -> tuple[dict, dict]:
  """(adapters, base) of a pure-dict params tree: the adapter leaves (and everything under the top-level keys
  `extra`, e.g. ('head', 'bias') for a judge whose head trains with the adapters) and the rest. ({}, params) when
  there are no adapters."""
  extra = set(extra)
  flat = traverse_util.flatten_dict(params)
  train = {p: v for p, v in flat.items() if is_adapter(p) or p[0] in extra}
  base = {p: v for p, v in flat.items() if p not in train}
  return traverse_util.unflatten_dict(train), traverse_util.unflatten_dict(base)


def combine(base: dict, adapters: dict) -> dict:
  """The whole params tree (for nnx.merge with the adapted graphdef) from `split_adapters`' two halves."""
  flat_base, flat_adapters = traverse_util.flatten_dict(base), traverse_util.flatten_dict(adapters)
  both = flat_base.keys() & flat_adapters.keys()
  if both:
    raise ValueError(f'{"/".join(map(str, sorted(both)[0]))} is in both the base and the adapters')
  return traverse_util.unflatten_dict({**flat_base, **flat_adapters})


def with_base(params: dict, base: dict | None) -> dict:
  """What an adapted graphdef runs: trained `params` (the adapters) combined with the frozen `base`; `params`
  alone when there is no base (LoRA off)."""
  return params if base is None else combine(base, params)


def merge_adapters(base: dict, adapters: dict, lora_cfg: LoraConfig) -> dict:
  """Base-shaped params with W + (alpha / rank) * A B folded into every adapted weight, in the weight's own layout
  and dtype (the product in float32 at full precision): what the adapted model computes, as a plain model.
  `base` alone when `adapters` is empty."""
  flat_base, flat = traverse_util.flatten_dict(base), traverse_util.flatten_dict(adapters)
  out = dict(flat_base)
  for path in [p for p in flat if is_adapter(p)]:
    weight_path = path[:-1] + (_weight_name(path[-1]),)
    pair = [weight_path[:-1] + (weight_path[-1] + s,) for s in (A_SUFFIX, B_SUFFIX)]
    if weight_path not in flat_base or any(p not in flat for p in pair):
      raise ValueError(f'adapter {"/".join(map(str, path))} has no weight or no partner')
    if path == pair[0]:
      w = flat_base[weight_path]
      delta = _product(w.shape, flat[pair[0]], flat[pair[1]])
      out[weight_path] = (w.astype(jnp.float32) + (lora_cfg.alpha / lora_cfg.rank) * delta).astype(w.dtype)
  return traverse_util.unflatten_dict(out)


def _product(w_shape: tuple[int, ...], a: jax.Array, b: jax.Array) -> jax.Array:
  """A B as a float32 array of W's shape (layouts as in `_layout`)."""
  lead, _ = _layout(w_shape, a.shape, b.shape)
  a2 = a.astype(jnp.float32).reshape(a.shape[:lead] + (-1, a.shape[-1]))
  b2 = b.astype(jnp.float32).reshape(b.shape[:lead + 1] + (-1,))
  return jnp.matmul(a2, b2, precision=jax.lax.Precision.HIGHEST).reshape(w_shape)


def count(adapters: dict) -> int:
  """The number of adapter parameters."""
  return sum(int(x.size) for path, x in traverse_util.flatten_dict(adapters).items() if is_adapter(path))
