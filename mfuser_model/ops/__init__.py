"""Numerical ops of the MFuser network.

- `mfuser_model.ops.selective_scan`: the Mamba-1 selective scan (`selective_scan`, `selective_scan_ref`, backends).
- `mfuser_model.ops.ms_deform_attn`: multi-scale deformable attention.

Import from the submodules. Nothing is re-exported here on purpose: a function named like its module
(`selective_scan`) would shadow the submodule attribute and break `import mfuser_model.ops.selective_scan as m`.
"""
