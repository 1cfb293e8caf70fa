"""Measurement and diagnosis, apart from the product: nothing the commands or the library API use.

`xla_programs.py` writes the meta-steps as XLA programs with TensorFlow's references, for a GPU
machine without TensorFlow; `xla_runner.py` runs them there (numpy and JAX only: it imports neither
TensorFlow nor this package, and travels as `run.py`); `graphs.py` walks a traced meta-step's graph
for the ops it holds. `tools/` holds the scripts that drive them (`gpu_check.py`, `benchmark.py`).
"""
