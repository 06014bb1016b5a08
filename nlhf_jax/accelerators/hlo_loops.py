"""Trip counts of the while loops of an optimized HLO module (accelerators/hlo.py multiplies each loop's body by
its count): XLA's `known_trip_count` when it gives one, else read from the loop's condition, the induction
variable against a bound, both constants (through copies, converts and the loop's initial tuple), in steps of
what the body adds to it (XLA's TPU windowed einsums step by 2). A condition that also ends the loop early (a
sampler that stops when every row has ended) counts the bound: the most the loop can run. None where the count
cannot be read.
"""
from __future__ import annotations

import re

from nlhf_jax.accelerators.hlo_text import Computation, Instruction, json_attr


def _constant(comps, comp: Computation, name: str, caller=None, depth: int = 0):
  """The integer value of `name` in `comp` when it is a constant (through copies, converts, fusion parameters and,
  for a loop's condition, the loop's initial tuple); None otherwise."""
  if depth > 12:
    return None
  instr = comp.instructions.get(name)
  if instr is None:
    return None
  if instr.opcode == 'constant':
    m = re.match(r'-?\d+', instr.attr('literal'))
    return int(m.group(0)) if m else None
  if instr.opcode in ('copy', 'convert', 'bitcast') and instr.operands:
    return _constant(comps, comp, instr.operands[0], caller, depth + 1)
  if instr.opcode == 'get-tuple-element' and caller is not None:
    source = comp.instructions.get(instr.operands[0])
    if source is not None and source.opcode == 'parameter':
      outer_comp, init = caller
      index = int(instr.attr('index'))
      tuple_instr = outer_comp.instructions.get(init)
      if tuple_instr is not None and tuple_instr.opcode == 'tuple' and index < len(tuple_instr.operands):
        return _constant(comps, outer_comp, tuple_instr.operands[index], None, depth + 1)
  return None


def _induction(comps, comp: Computation, name: str):
  """('gte', index) when `name` reads an element of the loop's tuple parameter (through copies), else None."""
  instr = comp.instructions.get(name)
  while instr is not None and instr.opcode in ('copy', 'convert', 'bitcast') and instr.operands:
    instr = comp.instructions.get(instr.operands[0])
  if instr is not None and instr.opcode == 'get-tuple-element':
    source = comp.instructions.get(instr.operands[0])
    if source is not None and source.opcode == 'parameter':
      return int(instr.attr('index'))
  return None


def trip_count(comps: dict[str, Computation], caller: Computation, loop: Instruction) -> int | None:
  """The number of times `loop` (a while instruction in `caller`) runs its body; None when it cannot be read."""
  known = json_attr(loop.attr('backend_config')).get('known_trip_count')
  if known and 'n' in known:
    return int(known['n'])
  cond = comps.get(re.findall(r'%([\w.\-]+)', loop.attr('condition'))[0])
  if cond is None:
    return None
  init = loop.operands[0]
  for instr in _compares(comps, cond):
    comp, compare, bind = instr
    direction = compare.attr('direction')
    if direction not in ('LT', 'LE', 'GT', 'GE') or len(compare.operands) != 2:
      continue
    a, b = (bind(o) for o in compare.operands)
    for var, bound, flip in ((a, b, False), (b, a, True)):
      if var is None or var[0] != 'gte':
        continue
      limit = _resolve(comps, cond, init, caller, bound)
      start = _resolve(comps, cond, init, caller, ('gte', var[1]))
      if limit is None or start is None:
        continue
      d = {'LT': 'GT', 'LE': 'GE', 'GT': 'LT', 'GE': 'LE'}[direction] if flip else direction
      step = _step(comps, loop, var[1])
      if d == 'LT':
        return max(-(-(limit - start) // step), 0)
      if d == 'LE':
        return max((limit - start) // step + 1, 0)
  return None


def _step(comps, loop: Instruction, index: int) -> int:
  """What the loop's body adds to element `index` of the loop tuple each time it runs (XLA's TPU windowed einsums
  unroll their loop by two and step by 2), through a fusion that holds the add; 1 when the update is not an add
  of a positive constant."""
  body = comps.get(re.findall(r'%([\w.\-]+)', loop.attr('body'))[0])
  root = body.root if body is not None else None
  if root is None or root.opcode != 'tuple' or index >= len(root.operands):
    return 1
  update = body.instructions.get(root.operands[index])
  is_fusion = update is not None and update.opcode == 'fusion' and update.called()
  fused = comps.get(update.called()[0]) if is_fusion else None

  def bind(name):  # (computation, instruction) of an operand of the add, out of the fusion when it is a parameter
    instr = fused.instructions.get(name) if fused is not None else body.instructions.get(name)
    if fused is not None and instr is not None and instr.opcode == 'parameter':
      return body, body.instructions.get(update.operands[int(instr.attr('index'))])
    return (fused or body), instr

  add = fused.root if fused is not None else update
  if add is None or add.opcode != 'add' or len(add.operands) != 2:
    return 1
  for var, inc in (add.operands, add.operands[::-1]):
    (var_comp, v), (inc_comp, c) = bind(var), bind(inc)
    if v is None or c is None or var_comp is not body or _induction(comps, body, v.name) != index:
      continue
    value = _constant(comps, inc_comp, c.name)
    return value if value is not None and value > 0 else 1
  return 1


def _resolve(comps, cond, init, caller, ref):
  """An integer from ('const', value) or ('gte', index of the loop tuple, resolved at the loop's start)."""
  if ref is None:
    return None
  if ref[0] == 'const':
    return ref[1]
  tuple_instr = caller.instructions.get(init)
  if tuple_instr is None or tuple_instr.opcode != 'tuple' or ref[1] >= len(tuple_instr.operands):
    return None
  return _constant(comps, caller, tuple_instr.operands[ref[1]])


def _compares(comps, cond: Computation):
  """(computation, compare instruction, bind) for each compare in the condition or its fusions; bind maps an
  operand to ('const', v), ('gte', index) or None, in the condition's terms."""
  out = []

  def bind_in(comp, args):
    def bind(name):
      if args is not None:  # a fused computation: parameter(n) is the fusion's operand n in the condition
        instr = comp.instructions.get(name)
        while instr is not None and instr.opcode in ('copy', 'convert', 'bitcast') and instr.operands:
          instr = comp.instructions.get(instr.operands[0])
        if instr is not None and instr.opcode == 'parameter':
          return bind_in(cond, None)(args[int(instr.attr('index'))])
        if instr is not None and instr.opcode == 'constant':
          return ('const', _constant(comps, comp, instr.name))
        return None
      value = _constant(comps, comp, name)
      if value is not None:
        return ('const', value)
      index = _induction(comps, comp, name)
      return ('gte', index) if index is not None else None
    return bind

  for instr in cond.instructions.values():
    if instr.opcode == 'compare':
      out.append((cond, instr, bind_in(cond, None)))
    elif instr.opcode == 'fusion':
      fused = comps.get(instr.called()[0]) if instr.called() else None
      if fused is not None:
        for sub in fused.instructions.values():
          if sub.opcode == 'compare':
            out.append((fused, sub, bind_in(fused, instr.operands)))
  return out
