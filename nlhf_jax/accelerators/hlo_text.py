"""HLO text as XLA prints an optimized module (`compiled.as_text()`): its computations and instructions, parsed
into plain objects (names, shapes, opcodes, operands, attributes), and the bytes of a shape. The costs are read
from them in accelerators/hlo.py."""
from __future__ import annotations

import dataclasses
import json
import math
import re

_ITEMSIZE = {'pred': 1, 's4': 0.5, 'u4': 0.5, 's8': 1, 'u8': 1, 's16': 2, 'u16': 2, 'f16': 2, 'bf16': 2, 's32': 4,
             'u32': 4, 'f32': 4, 's64': 8, 'u64': 8, 'f64': 8, 'c64': 8, 'c128': 16}
_ARRAY = re.compile(r'\b([a-z]+[0-9a-z]*)\[([0-9,]*)\]')


def shape_bytes(shape: str) -> float:
  """Bytes of an HLO shape (an array, or a tuple of them); tiling padding is not counted."""
  total = 0.0
  for dtype, dims in _ARRAY.findall(shape):
    if dtype in _ITEMSIZE:
      total += _ITEMSIZE[dtype] * math.prod(int(d) for d in dims.split(',') if d)
  return total


def dims(shape: str) -> list[int]:
  m = _ARRAY.search(shape)
  return [int(d) for d in m.group(2).split(',') if d] if m else []


@dataclasses.dataclass
class Instruction:
  name: str
  shape: str
  opcode: str
  operands: list[str]
  attrs: str
  root: bool = False

  def attr(self, key: str) -> str:
    """The value of `key=` in the attributes ('' if absent): a %name, a {...} group or a quoted string."""
    i = self.attrs.find(f'{key}=')
    if i < 0 or (i > 0 and self.attrs[i - 1] not in ' ,'):
      return ''
    return _value_at(self.attrs, i + len(key) + 1)

  def called(self) -> list[str]:
    names = []
    for key in ('calls', 'to_apply', 'condition', 'body', 'branch_computations', 'true_computation',
                'false_computation'):
      names += re.findall(r'%([\w.\-]+)', self.attr(key))
    return names

  @property
  def op_name(self) -> str:
    m = re.search(r'op_name="([^"]*)"', self.attr('metadata'))
    return m.group(1) if m else ''


def _value_at(text: str, i: int) -> str:
  """The attribute value that starts at text[i]: balanced {...} or "..." or up to the next ', '."""
  if i >= len(text):
    return ''
  if text[i] == '"':
    return text[i:text.index('"', i + 1) + 1]
  if text[i] == '{':
    return text[i:_matching(text, i) + 1]
  j = text.find(', ', i)
  return text[i:] if j < 0 else text[i:j]


def _matching(text: str, i: int) -> int:
  """Index of the bracket closing the one at text[i]."""
  pairs = {'(': ')', '[': ']', '{': '}'}
  stack = []
  j = i
  while j < len(text):
    c = text[j]
    if c == '"':
      j = text.index('"', j + 1)
    elif c in pairs:
      stack.append(pairs[c])
    elif stack and c == stack[-1]:
      stack.pop()
      if not stack:
        return j
    j += 1
  raise ValueError(f'unbalanced HLO text: {text[i:i + 80]}')


_HEADER = re.compile(r'^(ENTRY )?%?([\w.\-]+) \((.*)\) -> (.*) \{$')
_INSTR = re.compile(r'^\s*(ROOT )?%([\w.\-]+) = ')
_PARAMETER = re.compile(r'parameter\((\d+)\)')


def split_top(text: str) -> list[str]:
  """Splits at the commas that are not inside brackets."""
  out, depth, start = [], 0, 0
  for j, c in enumerate(text):
    if c in '([{':
      depth += 1
    elif c in ')]}':
      depth -= 1
    elif c == ',' and depth == 0:
      out.append(text[start:j].strip())
      start = j + 1
  if text[start:].strip():
    out.append(text[start:].strip())
  return out


def _parse_instruction(line: str) -> Instruction | None:
  m = _INSTR.match(line)
  if not m:
    return None
  rest = line[m.end():]
  if rest.startswith('('):
    end = _matching(rest, 0)
    shape, rest = rest[:end + 1], rest[end + 1:].lstrip()
  else:
    shape, _, rest = rest.partition(' ')
  paren = rest.find('(')
  opcode = rest[:paren]
  close = _matching(rest, paren)
  operands = re.findall(r'%([\w.\-]+)', rest[paren + 1:close])
  literal = rest[paren + 1:close] if opcode == 'constant' else ''
  attrs = rest[close + 1:].lstrip(', ')
  if literal:
    attrs = f'literal={literal}, {attrs}'
  return Instruction(m.group(2), shape, opcode, operands, attrs, bool(m.group(1)))


@dataclasses.dataclass
class Computation:
  name: str
  params: dict[str, str]  # parameter name -> shape
  instructions: dict[str, Instruction]
  entry: bool = False

  def shape_of(self, name: str) -> str:
    if name in self.instructions:
      return self.instructions[name].shape
    return self.params.get(name, '')

  @property
  def root(self) -> Instruction:
    return next(i for i in self.instructions.values() if i.root)


def parse_module(text: str) -> dict[str, Computation]:
  """Computations of an HLO module's text, by name."""
  comps, current = {}, None
  for line in text.splitlines():
    if current is None:
      m = _HEADER.match(line.strip())
      if m:
        params = {}
        for p in split_top(m.group(3)):
          name, _, shape = p.partition(': ')
          params[name.lstrip('%')] = shape
        current = Computation(m.group(2), params, {}, entry=bool(m.group(1)))
      continue
    if line.strip() == '}':
      comps[current.name] = current
      current = None
      continue
    instr = _parse_instruction(line)
    if instr is not None:
      if instr.opcode == 'parameter':
        index = _PARAMETER.search(line).group(1)
        instr.attrs = f'index={index}, {instr.attrs}'
      current.instructions[instr.name] = instr
  return comps


def json_attr(text: str) -> dict:
  """An attribute's JSON value (a backend_config), or {} where it is not JSON."""
  try:
    return json.loads(text) if text.startswith('{') else {}
  except json.JSONDecodeError:
    return {}
