"""The accelerators that `nlhf-compile --target=NAME` compiles for: one row each, with the figures that the
roofline reads (dense bfloat16 peak, HBM bandwidth and size, interconnect bandwidth) and how to make its
compile-only devices (a TPU topology name, or a GPU card's description and the hosts x devices-per-host layout).

Figures are the vendors' published ones per chip (TPU) or per GPU: peak dense bfloat16 matmul FLOP/s, HBM
bytes/s, HBM bytes, and the per-chip bandwidth of the fabric that collectives cross (ICI within a TPU slice;
NVLink within a GPU host, the network between hosts). TPU names count TensorCores the way Cloud TPU names
slices: v5p-8 is 4 chips (2 TensorCores each), v5e-8 and v6e-8 are 8 chips.
"""
from __future__ import annotations

import dataclasses

from nlhf_jax.config import ConfigError

GiB = 1 << 30


@dataclasses.dataclass(frozen=True)
class GpuCard:
  """What XLA's GPU compiler needs to know of a card (its GpuTargetConfigProto), from the card's data sheet."""
  description: str  # the device kind, e.g. 'NVIDIA H100 80GB HBM3'
  compute_capability: tuple[int, int]
  cores: int  # streaming multiprocessors
  clock_ghz: float
  l2_bytes: int
  shared_memory_per_core: int
  shared_memory_per_block_optin: int

  def target_config(self, memory_bytes: int, bandwidth: float) -> str:
    """The card as a GpuTargetConfigProto in text format (what jax's compile-only CUDA topology reads)."""
    major, minor = self.compute_capability
    fields = dict(threads_per_block_limit=1024, threads_per_warp=32, shared_memory_per_block=48 * 1024,
                  shared_memory_per_core=self.shared_memory_per_core, threads_per_core_limit=2048,
                  core_count=self.cores, fpus_per_core=128 if major >= 9 else 64,
                  block_dim_limit_x=2**31 - 1, block_dim_limit_y=65535, block_dim_limit_z=65535,
                  memory_bandwidth=int(bandwidth), l2_cache_size=self.l2_bytes, clock_rate_ghz=self.clock_ghz,
                  device_memory_size=memory_bytes, shared_memory_per_block_optin=self.shared_memory_per_block_optin,
                  registers_per_core_limit=65536, registers_per_block_limit=65536)
    lines = [f'  {k}: {v}' for k, v in fields.items()]
    lines.append(f'  cuda_compute_capability {{ major: {major} minor: {minor} }}')
    return ('gpu_device_info {\n' + '\n'.join(lines) + '\n}\nplatform_name: "CUDA"\n'
            'dnn_version_info { major: 9 minor: 1 patch: 0 }\n' f'device_description_str: "{self.description}"\n')


H100 = GpuCard('NVIDIA H100 80GB HBM3', (9, 0), 132, 1.98, 50 * 1024**2, 228 * 1024, 227 * 1024)
H200 = GpuCard('NVIDIA H200', (9, 0), 132, 1.98, 50 * 1024**2, 228 * 1024, 227 * 1024)
A100 = GpuCard('NVIDIA A100-SXM4-80GB', (8, 0), 108, 1.41, 40 * 1024**2, 164 * 1024, 163 * 1024)


@dataclasses.dataclass(frozen=True)
class Target:
  name: str
  platform: str  # 'tpu' or 'cuda'
  chips: int  # devices of the compiled program
  hosts: int  # processes of a run on it (one per host; for a TPU slice, as libtpu lays out its topology)
  memory_bytes: int  # HBM per device
  peak_flops: float  # dense bfloat16 FLOP/s per device
  hbm_bandwidth: float  # bytes/s per device
  link_bandwidth: float  # bytes/s per device for collectives within a host (ICI on TPU, NVLink on GPU)
  network_bandwidth: float = 0.0  # bytes/s per device between hosts (GPU); TPU slices stay on ICI
  topology: str = ''  # TPU: the topology name that libtpu reads, e.g. 'v5e:2x4'
  card: GpuCard | None = None

  @property
  def devices_per_host(self) -> int:
    return self.chips // self.hosts

  def describe(self) -> str:
    kind = self.topology if self.platform == 'tpu' else f'{self.hosts} x {self.devices_per_host} {self.card.description}'
    return (f'{self.name}: {self.chips} devices ({kind}), {self.memory_bytes / GiB:.1f} GiB, '
            f'{self.peak_flops / 1e12:.0f} TFLOP/s bf16, {self.hbm_bandwidth / 1e12:.2f} TB/s each')


def _tpu(name, topology, chips, hosts, memory_gib, tflops, hbm_gbs, ici_gbps):
  return Target(name, 'tpu', chips, hosts, int(memory_gib * GiB), tflops * 1e12, hbm_gbs * 1e9, ici_gbps * 1e9 / 8,
                topology=topology)


def _gpu(name, card, hosts, per_host, memory_bytes, tflops, hbm_tbs, nvlink_gbs, network_gbs=50.0):
  return Target(name, 'cuda', hosts * per_host, hosts, memory_bytes, tflops * 1e12, hbm_tbs * 1e12, nvlink_gbs * 1e9,
                network_gbs * 1e9 if hosts > 1 else 0.0, card=card)


_V5E = dict(memory_gib=16, tflops=197, hbm_gbs=819, ici_gbps=1600)
_V5P = dict(memory_gib=95, tflops=459, hbm_gbs=2765, ici_gbps=4800)
_V6E = dict(memory_gib=32, tflops=918, hbm_gbs=1640, ici_gbps=3584)
_H100 = dict(card=H100, memory_bytes=84942979072, tflops=989, hbm_tbs=3.35, nvlink_gbs=450)
_H200 = dict(card=H200, memory_bytes=150754820096, tflops=989, hbm_tbs=4.8, nvlink_gbs=450)
_A100 = dict(card=A100, memory_bytes=85899345920, tflops=312, hbm_tbs=2.04, nvlink_gbs=300)

TARGETS: dict[str, Target] = {t.name: t for t in (
    _tpu('tpu:v5e-4', 'v5e:2x2', 4, 1, **_V5E),
    _tpu('tpu:v5e-8', 'v5e:2x4', 8, 2, **_V5E),
    _tpu('tpu:v5e-16', 'v5e:4x4', 16, 4, **_V5E),
    _tpu('tpu:v5e-32', 'v5e:4x8', 32, 8, **_V5E),
    _tpu('tpu:v5p-8', 'v5p:2x2x1', 4, 1, **_V5P),
    _tpu('tpu:v5p-16', 'v5p:2x2x2', 8, 2, **_V5P),
    _tpu('tpu:v5p-32', 'v5p:2x2x4', 16, 4, **_V5P),
    _tpu('tpu:v5p-64', 'v5p:2x4x4', 32, 8, **_V5P),
    _tpu('tpu:v6e-4', 'v6e:2x2', 4, 1, **_V6E),
    _tpu('tpu:v6e-8', 'v6e:2x4', 8, 2, **_V6E),
    _tpu('tpu:v6e-16', 'v6e:4x4', 16, 4, **_V6E),
    _gpu('gpu:h100x1', hosts=1, per_host=1, **_H100),
    _gpu('gpu:h100x2', hosts=1, per_host=2, **_H100),
    _gpu('gpu:h100x8', hosts=1, per_host=8, **_H100),
    _gpu('gpu:h100x16', hosts=2, per_host=8, **_H100),
    _gpu('gpu:h200x1', hosts=1, per_host=1, **_H200),
    _gpu('gpu:h200x8', hosts=1, per_host=8, **_H200),
    _gpu('gpu:h200x16', hosts=2, per_host=8, **_H200),
    _gpu('gpu:a100-80x1', hosts=1, per_host=1, **_A100),
    _gpu('gpu:a100-80x8', hosts=1, per_host=8, **_A100),
)}


class CompileError(ConfigError):
  """A target's step does not fit, or the request cannot be compiled (nlhf-compile)."""


class TargetError(ConfigError):
  """An unknown target name."""


def get(name: str) -> Target:
  if name not in TARGETS:
    raise TargetError(f'--target={name!r} is unknown; choose one of {", ".join(TARGETS)}')
  return TARGETS[name]
