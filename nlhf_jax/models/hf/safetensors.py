"""Reading and writing the safetensors format, memory-mapped, without loading whole checkpoints.

A .safetensors file is an 8-byte little-endian header length N, N bytes of JSON ({name: {dtype, shape,
data_offsets: [begin, end]}, optional "__metadata__"}), then the tensors' bytes (little-endian, C order).
`SafetensorsReader` opens every shard of a checkpoint (with or without model.safetensors.index.json) and returns
each tensor as a numpy view of a read-only memory map: slicing it reads only the slice's pages. `write_sharded`
writes tensors one at a time into shards of at most `max_shard_bytes` (with the index when there are several),
so that an export holds one tensor in memory at a time.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Callable, Iterable

import ml_dtypes
import numpy as np

DTYPES = {
    'F64': np.dtype(np.float64), 'F32': np.dtype(np.float32), 'F16': np.dtype(np.float16),
    'BF16': np.dtype(ml_dtypes.bfloat16), 'I64': np.dtype(np.int64), 'I32': np.dtype(np.int32),
    'I16': np.dtype(np.int16), 'I8': np.dtype(np.int8), 'U8': np.dtype(np.uint8), 'BOOL': np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in DTYPES.items()}
INDEX = 'model.safetensors.index.json'
SINGLE = 'model.safetensors'


class SafetensorsError(ValueError):
  """A checkpoint file that is missing or not valid safetensors."""


def read_header(path: str) -> tuple[dict, int]:
  """({name: {dtype, shape, data_offsets}}, byte offset of the data) of one file."""
  try:
    with open(path, 'rb') as f:
      raw = f.read(8)
      if len(raw) < 8:
        raise SafetensorsError(f'{path}: not a safetensors file (shorter than its 8-byte header length)')
      (n,) = struct.unpack('<Q', raw)
      if n > os.path.getsize(path) - 8:
        raise SafetensorsError(f'{path} is truncated or not a safetensors file (its header length {n} exceeds the '
                               'file); download the file again')
      header = json.loads(f.read(n))
  except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
    raise SafetensorsError(f'{path}: cannot read the safetensors header ({e})') from None
  if isinstance(header, dict):
    header.pop('__metadata__', None)
  _check_entries(path, header, 8 + n)
  return header, 8 + n


def _check_entries(path: str, header: dict, start: int) -> None:
  """Every entry's fields are well formed, its byte range matches its shape and dtype, and the file holds every
  byte the header describes (a download cut short is named here, before any tensor is read)."""
  if not isinstance(header, dict):
    raise SafetensorsError(f'{path}: not a safetensors file (its header is not a JSON object); download it again')
  end = 0
  for name, info in header.items():
    try:
      begin, stop = (int(x) for x in info['data_offsets'])
      shape = tuple(int(d) for d in info['shape'])
      code = str(info['dtype'])
    except (KeyError, TypeError, ValueError):
      raise SafetensorsError(f'{path}: the header entry of tensor {name} is malformed (it needs dtype, shape and '
                             'data_offsets); the file is damaged: download it again') from None
    nbytes = int(np.prod(shape, dtype=np.int64)) * DTYPES[code].itemsize if code in DTYPES else stop - begin
    if begin < 0 or stop - begin != nbytes:
      raise SafetensorsError(f'{path}: tensor {name} has {stop - begin} bytes for shape {list(shape)} and dtype '
                             f'{code}; the file is damaged: download it again')
    end = max(end, stop)
  size = os.path.getsize(path)
  if start + end > size:
    raise SafetensorsError(f'{path} is truncated or damaged: it has {size} bytes but its header describes '
                           f'{start + end}; download the file again (an interrupted download leaves it cut short)')


class SafetensorsReader:
  """The tensors of a checkpoint directory (every *.safetensors shard), memory-mapped."""

  def __init__(self, directory: str):
    self.directory = directory
    self._where: dict[str, tuple[str, dict, int]] = {}
    for file in self._files():
      header, start = read_header(os.path.join(directory, file))
      for name, info in header.items():
        self._where[name] = (file, info, start)
    self._maps: dict[str, np.memmap] = {}

  def _files(self) -> list[str]:
    index = os.path.join(self.directory, INDEX)
    if os.path.exists(index):
      try:
        with open(index) as f:
          weight_map = json.load(f)['weight_map']
      except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise SafetensorsError(f'{index}: not a safetensors index ({e})') from None
      files = sorted(set(weight_map.values()))
      missing = [f for f in files if not os.path.exists(os.path.join(self.directory, f))]
      if missing:
        raise SafetensorsError(f'{self.directory}: the index names {len(missing)} shard(s) that are missing, first '
                               f'{missing[0]}; download every file of the checkpoint')
      return files
    files = sorted(f for f in os.listdir(self.directory) if f.endswith('.safetensors'))
    if not files:
      raise SafetensorsError(f'{self.directory}: no *.safetensors file (only safetensors checkpoints are read; '
                             'convert a pytorch_model.bin with transformers save_pretrained(safe_serialization=True))')
    return files

  def names(self) -> list[str]:
    return list(self._where)

  def __contains__(self, name: str) -> bool:
    return name in self._where

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._where[name][1]['shape'])

  def dtype(self, name: str) -> np.dtype:
    code = self._where[name][1]['dtype']
    if code not in DTYPES:
      raise SafetensorsError(f'{self.directory}: tensor {name} has dtype {code}, which is not supported')
    return DTYPES[code]

  def array(self, name: str) -> np.ndarray:
    """A read-only view of tensor `name` over the file's memory map."""
    file, info, start = self._where[name]
    if file not in self._maps:
      self._maps[file] = np.memmap(os.path.join(self.directory, file), dtype=np.uint8, mode='r')
    begin, end = info['data_offsets']  # checked against the shape and the file's size when the header was read
    dtype, shape = self.dtype(name), tuple(info['shape'])
    return self._maps[file][start + begin:start + end].view(dtype).reshape(shape)


def _header_bytes(tensors: list[tuple[str, tuple[int, ...], np.dtype]]) -> bytes:
  header, offset = {'__metadata__': {'format': 'pt'}}, 0
  for name, shape, dtype in tensors:
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    header[name] = {'dtype': _NAMES[dtype], 'shape': list(shape), 'data_offsets': [offset, offset + size]}
    offset += size
  raw = json.dumps(header, separators=(',', ':')).encode()
  raw += b' ' * (-len(raw) % 8)  # the data starts 8-byte aligned
  return struct.pack('<Q', len(raw)) + raw


def write_sharded(directory: str, tensors: Iterable[tuple[str, tuple[int, ...], np.dtype]],
                  fetch: Callable[[str], np.ndarray], max_shard_bytes: int = 5 * 10**9) -> list[str]:
  """Writes tensors (name, shape, dtype), each got by fetch(name) when its turn comes, into
  model.safetensors, or model-0000K-of-0000N.safetensors plus the index when they exceed max_shard_bytes.
  Returns the files written."""
  tensors = list(tensors)
  shards, size = [[]], 0
  for t in tensors:
    nbytes = int(np.prod(t[1], dtype=np.int64)) * t[2].itemsize
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(t)
    size += nbytes
  n = len(shards)
  files = [SINGLE] if n == 1 else [f'model-{i + 1:05d}-of-{n:05d}.safetensors' for i in range(n)]
  os.makedirs(directory, exist_ok=True)
  weight_map, total = {}, 0
  for file, shard in zip(files, shards):
    with open(os.path.join(directory, file), 'wb') as f:
      f.write(_header_bytes(shard))
      for name, shape, dtype in shard:
        value = np.array(fetch(name), dtype=dtype, order='C', copy=None)  # 0-d stays 0-d
        if value.shape != tuple(shape):
          raise SafetensorsError(f'tensor {name}: got shape {value.shape}, declared {tuple(shape)}')
        f.write(value.tobytes())  # little-endian: every platform JAX runs on
        weight_map[name] = file
        total += value.nbytes
  if n > 1:
    with open(os.path.join(directory, INDEX), 'w') as f:
      json.dump({'metadata': {'total_size': total}, 'weight_map': weight_map}, f, indent=2)
  return files
