"""What a compiled program does, read from its optimized HLO text: FLOPs, bytes and collectives, with every loop
counted by its trip count, instruction by instruction (so that a roofline can bound each one on its own).

XLA's own cost analysis counts a while loop's body once, and the GPU compile-only executables have none; this
reads the module that the target's compiler produced (`compiled.as_text()`) instead:
- FLOPs: 2 x output elements x contracted elements of every dot and convolution (TPU lowers dots to
  convolutions; GPU to Triton fusions or cuBLAS custom calls), inside fusions too, and 2 x the product's elements
  of a contraction written as a product of broadcasts and a sum (the sampler's decode attention off TPU).
  Elementwise work is left out: a transformer's step is its matmuls. An opaque kernel (a Pallas custom call)
  counts what `analyze`'s `kernels` says of it (models/flash.py counts its attention kernels), else nothing.
- Bytes: what each top-level instruction (a fusion, a copy, a collective...) reads and writes in device memory:
  its operands and its output, where an operand that the instruction only slices (a layer's weights out of the
  stacked layers, a cache row) counts the slice, and an in-place dynamic-update-slice (a KV cache write) counts
  the update, not the buffer. An opaque kernel that reads part of a buffer it is handed (models/flash.py's decode
  attention, the filled slots of a cache) counts what `kernels` says it reads. An async collective counts at its
  '-start': its operands read and its results written (its '-done' hands the results over).
- Collectives: the bytes that all-reduce, all-gather, reduce-scatter, all-to-all and collective-permute move.
- Loops: each body counted its loop's trip count times (accelerators/hlo_loops.py reads them: XLA's
  `known_trip_count`, else the condition's bound); a loop whose count cannot be read counts once and is listed in
  `Costs.uncounted_loops`.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable

import numpy as np

from nlhf_jax.accelerators.hlo_loops import trip_count
from nlhf_jax.accelerators.hlo_text import (Computation, Instruction, dims, json_attr, parse_module, shape_bytes,
                                          split_top)

_COLLECTIVES = ('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all', 'collective-permute', 'ragged-all-to-all')
# An async collective's '-done' hands over the buffer its '-start' wrote (counted there): no traffic of its own.
_FREE = {'parameter', 'constant', 'tuple', 'get-tuple-element', 'bitcast', 'while', 'call', 'conditional',
         'after-all', 'partition-id', 'replica-id', 'opt-barrier', 'iota', 'copy-done', 'send-done', 'recv-done',
         'add-dependency', 'domain'} | {f'{c}-done' for c in _COLLECTIVES}
_SLICING = {'dynamic-slice', 'slice', 'gather'}

# ---- FLOPs of one instruction ----

def _dot_flops(instr: Instruction, comp: Computation) -> float:
  if instr.opcode == 'dot':
    lhs = dims(comp.shape_of(instr.operands[0]))
    contracting = [int(d) for d in re.findall(r'\d+', instr.attr('lhs_contracting_dims'))]
    return 2.0 * math.prod(dims(instr.shape)) * math.prod(lhs[d] for d in contracting)
  if instr.opcode == 'convolution':
    return _convolution_flops(instr, comp)
  if instr.opcode == 'custom-call' and 'gemm' in instr.attr('custom_call_target').lower() or \
     instr.opcode == 'custom-call' and 'matmul' in instr.attr('custom_call_target').lower():
    config = json_attr(instr.attr('backend_config'))
    gemm = config.get('gemm_backend_config', config)
    numbers = gemm.get('dot_dimension_numbers', {})
    lhs = dims(comp.shape_of(instr.operands[0]))
    contracting = [int(d) for d in numbers.get('lhs_contracting_dimensions', [])]
    out = dims(instr.shape if not instr.shape.startswith('(') else instr.shape[1:])
    return 2.0 * math.prod(out) * math.prod(lhs[d] for d in contracting)
  if instr.opcode == 'reduce' and _is_contraction(instr, comp):
    return 2.0 * math.prod(dims(comp.shape_of(instr.operands[0])))
  return 0.0


def _is_contraction(reduce: Instruction, comp: Computation) -> bool:
  """A reduce of a product with a broadcast operand: a contraction written as a product and a sum (the sampler's
  attention of one decoded token over its cache, models/attention._product_einsum; the compiler folds the other
  operand's inserted unit axes into a reshape), whose FLOPs are those of the matmul it stands for. A reduce of
  anything else (a norm's sum of squares) is elementwise work."""
  product = comp.instructions.get(reduce.operands[0].lstrip('%')) if reduce.operands else None
  if product is None or product.opcode != 'multiply':
    return False

  def broadcast(name: str, depth: int = 0) -> bool:
    instr = comp.instructions.get(name.lstrip('%'))
    if instr is None or depth > 4:
      return False
    if instr.opcode == 'broadcast':
      return True
    return instr.opcode in ('convert', 'bitcast', 'copy', 'reshape') and broadcast(instr.operands[0], depth + 1)
  return len(product.operands) == 2 and any(broadcast(o) for o in product.operands)


def _window(text: str) -> dict[str, list]:
  """window={size=4x4 stride=3x3 pad=0_0x3_3 lhs_dilate=4x4 rhs_dilate=1x1} -> per spatial dimension lists."""
  out = {}
  for item in text.strip('{}').split():
    key, _, value = item.partition('=')
    out[key] = [tuple(int(p) for p in v.split('_')) if key == 'pad' else int(v) for v in value.split('x')]
  return out


def _valid_pairs(size_in: int, size_out: int, kernel: int, stride: int, pad_low: int, lhs_dilate: int,
                 rhs_dilate: int) -> int:
  """(output, kernel) position pairs of one spatial dimension that land on an input element (not on padding or
  between dilated elements): the multiply-adds a convolution does along it."""
  o = np.arange(size_out)[:, None] * stride - pad_low
  pos = o + np.arange(kernel)[None, :] * rhs_dilate
  valid = (pos >= 0) & (pos <= (size_in - 1) * lhs_dilate) & (pos % lhs_dilate == 0)
  return int(valid.sum())


def _convolution_flops(instr: Instruction, comp: Computation) -> float:
  """2 x the multiply-adds of a convolution (XLA's TPU form of a dot): batch x output features x input features
  of a group x the valid window positions of each spatial dimension."""
  labels = instr.attr('dim_labels')  # e.g. bf_io->bf, 0bf1_i1o0->0b1f
  try:
    lhs_l, rest = labels.split('_')
    rhs_l, out_l = rest.split('->')
  except ValueError:
    return 0.0
  lhs, rhs, out = (dims(comp.shape_of(instr.operands[0])), dims(comp.shape_of(instr.operands[1])),
                   dims(instr.shape))
  if not (len(lhs) == len(lhs_l) and len(rhs) == len(rhs_l) and len(out) == len(out_l)):
    return 0.0
  window = _window(instr.attr('window')) if instr.attr('window') else {}
  macs = out[out_l.index('b')] * out[out_l.index('f')] * rhs[rhs_l.index('i')]
  for d in sorted(c for c in lhs_l if c.isdigit()):
    k = int(d)
    get = lambda key, default: window.get(key, [default] * (k + 1))[k]
    macs *= _valid_pairs(lhs[lhs_l.index(d)], out[out_l.index(d)], rhs[rhs_l.index(d)], get('stride', 1),
                         get('pad', (0, 0))[0], get('lhs_dilate', 1), get('rhs_dilate', 1))
  return 2.0 * macs


# ---- bytes of one top-level instruction ----

def _read_of(comps, fused: Computation, name: str, whole: float, depth: int = 0) -> float:
  """Bytes of the value `name` (of `whole` bytes) that the fused computation reads: the slices taken when every use
  slices it (through bitcasts and nested fusions), nothing when it is a buffer updated in place, else all of it."""
  users = [u for u in fused.instructions.values() if name in u.operands]
  if not users or depth > 8:
    return whole
  read = 0.0
  for u in users:
    if u.opcode in _SLICING and u.operands[0] == name:
      read += shape_bytes(u.shape)
    elif u.opcode == 'dynamic-update-slice' and u.operands[0] == name:
      continue  # updated in place: only the update is read and written
    elif u.opcode == 'bitcast':
      read += _read_of(comps, fused, u.name, whole, depth + 1)
    elif u.opcode == 'fusion' and u.called() and u.called()[0] in comps:
      inner = comps[u.called()[0]]
      for index, operand in enumerate(u.operands):
        if operand == name:
          param = _parameter(inner, index)
          read += whole if param is None else _read_of(comps, inner, param.name, whole, depth + 1)
    else:
      return whole
  return min(read, whole)


def _parameter(comp: Computation, index: int) -> Instruction | None:
  return next((p for p in comp.instructions.values() if p.opcode == 'parameter' and p.attr('index') == str(index)),
              None)


def _operand_bytes(comps, comp: Computation, instr: Instruction) -> float:
  """Bytes that `instr` reads: each operand whole, or only its slices when the fused computation only slices it."""
  fused = comps.get(instr.called()[0]) if instr.opcode == 'fusion' and instr.called() else None
  total = 0.0
  for index, name in enumerate(instr.operands):
    whole = shape_bytes(comp.shape_of(name))
    if fused is not None:
      param = _parameter(fused, index)
      if param is not None:
        whole = _read_of(comps, fused, param.name, whole)
    elif instr.opcode in _SLICING and index == 0:
      whole = shape_bytes(instr.shape)
    elif instr.opcode == 'dynamic-update-slice' and index == 0:
      whole = 0.0
    total += whole
  return total


def _output_bytes(comps, comp: Computation, instr: Instruction) -> float:
  fused = comps.get(instr.called()[0]) if instr.opcode == 'fusion' and instr.called() else None
  root = fused.root if fused is not None else instr
  if root.opcode == 'dynamic-update-slice':
    holder = fused if fused is not None else comp
    return shape_bytes(holder.shape_of(root.operands[1]))  # the update written
  if instr.opcode == 'custom-call' and instr.shape.startswith('('):  # (result, workspace): scratch is no HBM traffic
    return shape_bytes(split_top(instr.shape[1:-1])[0])
  if instr.opcode.endswith('-start') and instr.opcode.removesuffix('-start') in _COLLECTIVES:
    return _collective_result_bytes(comp, instr)
  return shape_bytes(instr.shape)


def _collective_result_bytes(comp: Computation, instr: Instruction) -> float:
  """Bytes of what an async collective's '-start' writes: its results. Its shape is the result itself
  (all-reduce-start), or a tuple that holds its operands (aliased, not written) before the results, and for a
  collective-permute its synchronisation words after them (all-gather-start, reduce-scatter-start,
  all-to-all-start, collective-permute-start)."""
  if not instr.shape.startswith('('):
    return shape_bytes(instr.shape)
  parts = split_top(instr.shape[1:-1])
  operands = [comp.shape_of(o) for o in instr.operands]
  held = parts[0][1:-1] if parts[0].startswith('(') else parts[0]
  if len(parts) < 2 or sorted(split_top(held)) != sorted(operands):
    return shape_bytes(instr.shape)  # a form not known here: every part counted
  return shape_bytes(parts[1])


@dataclasses.dataclass
class Op:
  """One top-level instruction's costs, each already multiplied by the times it runs."""
  name: str
  opcode: str
  phase: str
  flops: float
  bytes: float
  collective_bytes: float
  count: int
  marks: tuple[str, ...] = ()  # the `marks` scopes that hold the instruction (its own op_name's or its loop's)


@dataclasses.dataclass
class Costs:
  ops: list[Op]
  uncounted_loops: list[str]
  loops: dict[str, int]  # while instruction -> trip count

  @property
  def flops(self) -> float:
    return sum(o.flops for o in self.ops)

  @property
  def bytes(self) -> float:
    return sum(o.bytes for o in self.ops)

  @property
  def collective_bytes(self) -> float:
    return sum(o.collective_bytes for o in self.ops)

  def by_phase(self) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for o in self.ops:
      p = out.setdefault(o.phase, dict(flops=0.0, bytes=0.0, collective_bytes=0.0))
      p['flops'] += o.flops
      p['bytes'] += o.bytes
      p['collective_bytes'] += o.collective_bytes
    return out


def _phase(op_name: str, phases: tuple[str, ...], inherited: str) -> str:
  for p in phases:
    if f'/{p}/' in f'/{op_name}/':
      return p
  return inherited


def analyze(text: str, phases: tuple[str, ...] = (), marks: tuple[str, ...] = (),
            kernels: Callable[[str, list[tuple[list[int], float]]], tuple[float, float | None] | None] | None = None
            ) -> Costs:
  """Costs of the module in `text` (an optimized HLO module), per top-level instruction, loops multiplied out.
  `phases`: jax.named_scope names; an instruction whose op_name holds one is in that phase (a loop's body in its
  loop's phase), else 'other'. `marks`: scope names each Op lists when its op_name or its loop's holds them (a
  part of a phase, such as the sampler's decode loop). `kernels(op_name, [(dimensions, itemsize) of each
  operand])`: (FLOPs, bytes) of a custom call that XLA cannot see into, bytes None for its operands and output
  (None: not a kernel it knows)."""
  comps = parse_module(text)
  entry = next(c for c in comps.values() if c.entry)
  ops, uncounted, loops = [], [], {}
  flops_of: dict[str, float] = {}

  def fused_flops(name: str) -> float:  # FLOPs of a fused computation (nested fusions included)
    if name not in flops_of:
      comp = comps.get(name)
      total = 0.0
      if comp is not None:
        for instr in comp.instructions.values():
          total += _dot_flops(instr, comp)
          if instr.opcode == 'fusion':
            total += sum(fused_flops(c) for c in instr.called())
      flops_of[name] = total
    return flops_of[name]

  def walk(comp: Computation, times: int, phase: str, depth: int = 0, marked: tuple[str, ...] = ()) -> None:
    if depth > 64:
      return
    for instr in comp.instructions.values():
      here = _phase(instr.op_name, phases, phase)
      held = marked + tuple(m for m in marks if m not in marked and f'/{m}/' in f'/{instr.op_name}/')
      if instr.opcode == 'while':
        body = re.findall(r'%([\w.\-]+)', instr.attr('body'))[0]
        cond = re.findall(r'%([\w.\-]+)', instr.attr('condition'))[0]
        n = trip_count(comps, comp, instr)
        if n is None:
          uncounted.append(instr.name)
          n = 1
        loops[instr.name] = n
        walk(comps[body], times * n, here, depth + 1, held)
        walk(comps[cond], times * (n + 1), here, depth + 1, held)
        continue
      if instr.opcode in ('call', 'conditional', 'async-start'):
        for c in instr.called():
          if c in comps:
            walk(comps[c], times, here, depth + 1, held)
        continue
      if instr.opcode in _FREE:
        continue
      flops, kernel_bytes = _dot_flops(instr, comp), None
      if instr.opcode == 'custom-call' and kernels is not None:
        shapes = [comp.shape_of(o) for o in instr.operands]
        known = kernels(instr.op_name, [(dims(x), shape_bytes(x) / max(1, math.prod(dims(x)))) for x in shapes])
        if known is not None:
          flops, kernel_bytes = known
      if instr.opcode == 'fusion':
        flops += sum(fused_flops(c) for c in instr.called())
      base = instr.opcode.removesuffix('-start')
      moved = _collective_result_bytes(comp, instr) if base in _COLLECTIVES else 0.0
      if base == 'reduce-scatter':
        moved = sum(shape_bytes(comp.shape_of(o)) for o in instr.operands)
      elif base == 'all-reduce':
        moved = 2 * shape_bytes(instr.shape)
      memory = _operand_bytes(comps, comp, instr) + _output_bytes(comps, comp, instr)
      memory = memory if kernel_bytes is None else kernel_bytes
      ops.append(Op(instr.name, instr.opcode, here, flops * times, memory * times, moved * times, times, held))

  walk(entry, 1, 'other')
  return Costs(ops, uncounted, loops)
