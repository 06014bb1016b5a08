"""A roofline bound of a compiled program's time on a target, instruction by instruction.

Each top-level instruction takes at least max(FLOPs / peak, bytes / HBM bandwidth) (compute- or memory-bound,
whichever binds) and each collective its bytes over the fabric (the interconnect within a host; the network
between hosts when the target has several GPU hosts). Summed over the instructions (loops multiplied out, no
overlap of compute with communication assumed), this is the least time the program can take: a real step is
slower (kernel launches, imperfect fusion, pipeline bubbles). The MFU it implies is the model's analytic FLOPs
over that time at the target's peak: an upper bound of what a run can reach.
"""
from __future__ import annotations

import dataclasses

from nlhf_jax.accelerators.hlo import Costs
from nlhf_jax.accelerators.targets import Target


@dataclasses.dataclass(frozen=True)
class Phase:
  compute_s: float  # instructions whose compute bound binds
  memory_s: float  # instructions whose bandwidth bound binds
  collective_s: float
  flops: float
  bytes: float

  @property
  def seconds(self) -> float:
    return self.compute_s + self.memory_s + self.collective_s

  @property
  def bound(self) -> str:
    parts = dict(compute=self.compute_s, memory=self.memory_s, collectives=self.collective_s)
    return max(parts, key=parts.get)


def roofline(costs: Costs, target: Target) -> dict[str, Phase]:
  """The bound per phase (the phases that `costs` was read with, and 'other'), and 'total'."""
  link = target.network_bandwidth if target.hosts > 1 and target.network_bandwidth else target.link_bandwidth
  acc: dict[str, list[float]] = {}
  for op in costs.ops:
    compute, memory = op.flops / target.peak_flops, op.bytes / target.hbm_bandwidth
    a = acc.setdefault(op.phase, [0.0] * 5)
    a[0] += compute if compute >= memory else 0.0
    a[1] += memory if memory > compute else 0.0
    a[2] += op.collective_bytes / link
    a[3] += op.flops
    a[4] += op.bytes
  phases = {name: Phase(*values) for name, values in acc.items()}
  phases['total'] = Phase(*(sum(p[i] for p in acc.values()) for i in range(5)))
  return phases


def mfu(model_flops_per_device: float, seconds: float, target: Target) -> float:
  return model_flops_per_device / (seconds * target.peak_flops) if seconds > 0 else 0.0
