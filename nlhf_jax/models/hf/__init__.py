"""Hugging Face checkpoints in and out of the one Transformer (Llama 3, Qwen 2.5/3, Mistral, Gemma 2/3).

  model = from_pretrained('~/models/Qwen2.5-0.5B')          # an NNX Transformer, float32 parameters
  logits, _ = model(tokens_bt, mask_bt)

`read_config` maps config.json to a ModelConfig (config.py), `check_tensors` checks every tensor's name and shape
against the family's table (tensors.py) before anything is read, and `load_params` places each parameter onto
its sharding by the rule table, each device reading its own slice from the safetensors memory map
(`jax.make_array_from_callback`). The nlhf-import and nlhf-export commands (nlhf_jax/interop) build on these.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nlhf_jax.config import ModelConfig
from nlhf_jax.distributed.multihost import is_leader, to_host
from nlhf_jax.distributed.sharding import param_specs
from nlhf_jax.logs import progress_bar
from nlhf_jax.models.hf.config import (FAMILIES, HFFormatError, exported_config, hf_config, model_config,
                                      original_dtype)
from nlhf_jax.models.hf.safetensors import SafetensorsError, SafetensorsReader, write_sharded
from nlhf_jax.models.hf.tensors import IGNORED_SUFFIXES, TEXT_PREFIXES, Entry, entries, hf_name
from nlhf_jax.models.transformer import STACK, Transformer

__all__ = ['FAMILIES', 'HFFormatError', 'SafetensorsError', 'abstract_transformer', 'check_tensors',
           'exported_config', 'from_pretrained', 'hf_config', 'load_params', 'model_config', 'original_dtype',
           'read_config', 'save_pretrained']

log = logging.getLogger(__name__)


def read_config(hf_dir: str) -> tuple[ModelConfig, dict]:
  """(ModelConfig, the raw config.json) of a Hugging Face model directory."""
  path = os.path.join(hf_dir, 'config.json')
  if not os.path.isdir(hf_dir):
    raise HFFormatError(f'{hf_dir} is not a directory; give the folder of a Hugging Face model (config.json and '
                        '*.safetensors, as save_pretrained or a download writes them)')
  if not os.path.exists(path):
    raise HFFormatError(f'{hf_dir} has no config.json; give the folder of a Hugging Face model')
  try:
    with open(path) as f:
      raw = json.load(f)
  except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
    raise HFFormatError(f'{path}: not valid JSON ({e}); download the file again') from None
  if not isinstance(raw, dict):
    raise HFFormatError(f'{path}: holds a JSON {type(raw).__name__}, not the object of a model config')
  try:
    return model_config(raw), raw
  except HFFormatError:
    raise
  except (TypeError, ValueError, KeyError, AttributeError) as e:  # a value of the wrong type, e.g. "hidden_size": "x"
    raise HFFormatError(f'{path}: a value of the wrong type ({type(e).__name__}: {e}); compare it with the '
                        "family's config.json on the Hub") from None


def _text_prefix(reader: SafetensorsReader) -> str:
  for prefix in TEXT_PREFIXES:
    if hf_name('model.embed_tokens.weight', prefix) in reader:
      return prefix
  raise HFFormatError(f'{reader.directory}: no tensor model.embed_tokens.weight in the safetensors files; this '
                      'is not a causal language model checkpoint of a supported family')


def check_tensors(reader: SafetensorsReader, cfg: ModelConfig) -> tuple[str, list[Entry]]:
  """(prefix of the language model's names, table entries) after checking that the checkpoint holds exactly
  the tensors `cfg` implies, with their shapes; HFFormatError naming the first that does not."""
  prefix = _text_prefix(reader)
  table = entries(cfg)
  for e in table:
    name = hf_name(e.name, prefix)
    if name not in reader:
      raise HFFormatError(f'{reader.directory}: tensor {name} is missing (config.json implies it); the checkpoint '
                          'is incomplete or belongs to another architecture')
    if reader.shape(name) != e.stored_shape:
      raise HFFormatError(f'{reader.directory}: tensor {name} has shape {list(reader.shape(name))}, but config.json '
                          f'implies {list(e.stored_shape)}')
    reader.dtype(name)  # an unsupported dtype fails here, before any read
  known = {hf_name(e.name, prefix) for e in table} | {hf_name('lm_head.weight', prefix)}
  text_names = [n for n in reader.names() if prefix == '' or n.startswith(prefix) or n == 'lm_head.weight']
  extra = [n for n in text_names if n not in known and not n.endswith(IGNORED_SUFFIXES)]
  if extra:
    raise HFFormatError(f'{reader.directory}: unexpected tensor {extra[0]} ({len(extra)} in all); config.json and '
                        'the weights describe different architectures')
  return prefix, table


def _sharding(mesh: Mesh | None, spec: P):
  return jax.sharding.SingleDeviceSharding(jax.devices()[0]) if mesh is None else NamedSharding(mesh, spec)


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _get(tree: dict, path: tuple[str, ...]):
  for key in path:
    tree = tree[key]
  return tree


def _param_of(params: dict, path: tuple[str, ...], cfg: ModelConfig):
  """A thunk giving the parameter at the table's (unrolled) `path`; in a scanned stack, that layer's slice."""
  if cfg.scan_layers and path[0].startswith('layer_'):
    i = int(path[0].split('_')[1])
    return lambda: _get(params, (STACK,) + path[1:])[i]
  return lambda: _get(params, path)


def abstract_transformer(cfg: ModelConfig) -> tuple[nnx.GraphDef, Any]:
  return nnx.split(nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0))))


def load_params(hf_dir: str, cfg: ModelConfig, mesh: Mesh | None = None, dtype=jnp.float32,
                reader: SafetensorsReader | None = None, vocab_size: int | None = None) -> dict:
  """The Transformer's parameters (a pure dict) from the checkpoint in hf_dir, each placed onto its sharding by
  the rule table on `mesh` (one device when None) and cast to `dtype`; every device reads only its slice.

  `vocab_size` larger than cfg.vocab_size pads the embedding (and an untied unembedding) to that many ids: each
  new row (column) is the mean of the checkpoint's rows (columns); the parameters then fit
  dataclasses.replace(cfg, vocab_size=vocab_size)."""
  reader = SafetensorsReader(hf_dir) if reader is None else reader
  prefix, table = check_tensors(reader, cfg)
  padded = vocab_size is not None and vocab_size > cfg.vocab_size
  _, abstract = abstract_transformer(dataclasses.replace(cfg, vocab_size=vocab_size) if padded else cfg)
  specs = param_specs(abstract)
  dtype = np.dtype(dtype)
  views = {e.path: e.layout.to_param(reader.array(hf_name(e.name, prefix))) for e in table}
  if padded:
    views[('embed',)] = PaddedVocab(views[('embed',)], 0, vocab_size)
    if ('unembed',) in views:
      views[('unembed',)] = PaddedVocab(views[('unembed',)], 1, vocab_size)
  params: dict = {}
  sources = _sources(views, cfg, dtype)
  for path, (shape, fetch) in progress_bar(sources.items(), 'placing tensors', total=len(sources), unit='tensor'):
    _set(params, path, jax.make_array_from_callback(shape, _sharding(mesh, _get(specs, path)), fetch))
  return params


class PaddedVocab:
  """A parameter view with its vocabulary axis extended to `size`: the rows past the stored ones are the mean of
  the stored rows (computed once, reading the tensor in chunks); slicing reads only the stored rows it covers."""

  def __init__(self, view, axis: int, size: int, chunk: int = 4096):
    self.view, self.axis, self.stored = view, axis, view.shape[axis]
    self.shape = tuple(size if i == axis else n for i, n in enumerate(view.shape))
    total = np.zeros([n for i, n in enumerate(view.shape) if i != axis], np.float64)
    for start in range(0, self.stored, chunk):
      part = np.take(view, np.arange(start, min(start + chunk, self.stored)), axis=axis)
      total += np.asarray(part, np.float64).sum(axis=axis)
    self.fill = np.expand_dims(total / max(self.stored, 1), axis)

  def __getitem__(self, index):
    index = tuple(index) + (slice(None),) * (len(self.shape) - len(tuple(index)))
    start, stop, step = index[self.axis].indices(self.shape[self.axis])
    if step != 1:
      raise IndexError('PaddedVocab slices with step 1 only')
    inside = slice(start, max(start, min(stop, self.stored)))
    at = lambda s: tuple(s if i == self.axis else x for i, x in enumerate(index))
    part = np.asarray(self.view[at(inside)], np.float64)
    others = tuple(x for i, x in enumerate(index) if i != self.axis)
    fill = np.expand_dims(np.squeeze(self.fill, self.axis)[others], self.axis)
    extra = np.repeat(fill, max(0, stop - max(start, self.stored)), axis=self.axis)
    return np.concatenate([part, extra], axis=self.axis)


def _sources(views: dict, cfg: ModelConfig, dtype: np.dtype) -> dict:
  """{parameter path: (shape, fetch(index) -> numpy slice)}: the table's views, or, for a scanned stack, each
  per-layer parameter stacked on a leading layer axis (a device's slice reads only its layers' slices)."""
  single = lambda view: (view.shape, lambda index: np.asarray(view[index], dtype=dtype))
  if not cfg.scan_layers:
    return {path: single(view) for path, view in views.items()}
  out = {path: single(view) for path, view in views.items() if not path[0].startswith('layer_')}
  for rest in {path[1:] for path in views if path[0] == 'layer_0'}:
    layers = [views[(f'layer_{i}',) + rest] for i in range(cfg.num_layers)]

    def fetch(index, layers=layers):
      return np.stack([np.asarray(layers[i][index[1:]], dtype=dtype) for i in range(cfg.num_layers)[index[0]]])
    out[(STACK,) + rest] = ((cfg.num_layers,) + layers[0].shape, fetch)
  return out


def from_pretrained(hf_dir: str, dtype=jnp.float32, mesh: Mesh | None = None,
                    compute_dtype: str = 'float32') -> Transformer:
  """The NNX Transformer of a Hugging Face model directory, parameters in `dtype` (float32 by default), sharded
  on `mesh` by the rule table when given. model(tokens_bt, mask_bt) returns (float32 logits, cache)."""
  cfg, _ = read_config(os.path.expanduser(hf_dir))
  cfg = dataclasses.replace(cfg, compute_dtype=compute_dtype)
  graphdef, abstract = abstract_transformer(cfg)
  params = load_params(os.path.expanduser(hf_dir), cfg, mesh, dtype)
  return nnx.merge(graphdef, params)


def save_pretrained(out_dir: str, cfg: ModelConfig, params: dict, dtype: str = 'float32',
                    extra: dict[str, Any] | None = None, token_ids: dict | None = None,
                    max_shard_bytes: int = 5 * 10**9, config: dict | None = None) -> list[str]:
  """Writes config.json and the safetensors shards of the Transformer (cfg, params) in its family's names and
  layouts (native models as llama), cast to `dtype`, one tensor on the host at a time; `extra` adds tensors
  under their own names (e.g. a judge's head). config.json is `config` when given (key order kept), else
  hf_config(cfg) (keys sorted). Every process must call it (sharded parameters are gathered); process 0 writes.
  Returns the files written."""
  table = entries(cfg)
  np_dtype = np.dtype(jnp.dtype(dtype))
  given = config is not None
  config = config if given else hf_config(cfg, dtype=str(jnp.dtype(dtype)), token_ids=token_ids)
  values = {e.name: (e, _param_of(params, e.path, cfg)) for e in table}
  for name, x in (extra or {}).items():
    values[name] = (None, lambda x=x: x)

  def fetch(name: str) -> np.ndarray:
    entry, get = values[name]
    host = to_host(get())
    return host if entry is None else entry.layout.to_stored(host, entry.stored_shape)

  shapes = [(n, e.stored_shape if e is not None else tuple(np.shape(get())), np_dtype)
            for n, (e, get) in values.items()]
  if not is_leader():  # the others take part in the gathers only
    for name, _, _ in shapes:
      fetch(name)
    return []
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, 'config.json'), 'w') as f:
    json.dump(config, f, indent=2, sort_keys=not given)
  return ['config.json', *write_sharded(out_dir, shapes, fetch, max_shard_bytes)]
