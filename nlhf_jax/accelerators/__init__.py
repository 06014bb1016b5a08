"""Accelerators a step is compiled for without their hardware: the targets' table (targets.py), the compile-only
devices of the TPU and NVIDIA compilers (devices.py), and what a compiled program costs (hlo.py: FLOPs and bytes
with loops counted by their trip counts; roofline.py: the time and MFU those imply on a target)."""
