"""The XLA:CPU flags of every process that the tests start (pytest's own and the commands they launch).

Tests run tiny models: nearly all their time is XLA compiling programs that then run for milliseconds. These flags
make compilation several times cheaper and leave the numbers alone (no fast-math; only how hard LLVM optimises
the generated loops and which of XLA's two CPU emitters writes fused kernels):
- `xla_backend_optimization_level=0`: LLVM at -O0 instead of -O3 (a few tests that train for hundreds of steps
  run slower, by less than every other test saves: measured on the online-step and HF-flow tests, 109 s of CPU
  at -O0 against 151 s at -O1);
- `xla_llvm_disable_expensive_passes`: skips LLVM's costliest passes;
- `xla_cpu_use_fusion_emitters=false`: XLA's elemental emitter for fused kernels instead of the MLIR fusion
  emitters, which take most of the compile time of small programs;
- `xla_cpu_parallel_codegen_split_count=1`: one LLVM module per program (the pytest workers already use the cores).
Training and benchmark commands run without them (a user's XLA_FLAGS are the user's).
"""
COMPILE_FAST = ('--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true '
                '--xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1')


def xla_flags(devices: int | None, llvm_level: int = 0) -> str:
  """XLA_FLAGS for a process with `devices` fake CPU devices (None: one); `llvm_level=1` for a process that trains
  for hundreds of steps (tests/online/test_cycle.py), where -O0's slower kernels cost more than they save."""
  fake = f' --xla_force_host_platform_device_count={devices}' if devices else ''
  return COMPILE_FAST.replace('level=0', f'level={llvm_level}') + fake
