"""Training runs: their settings, the loop, evaluation, and what keeps a run safe.

`config.py` is `RunConfig` (the tree of settings behind the flags); `trainer.py`
assembles a run (`train`), `controller.py` owns the loop's cadence, `task.py`
supplies its steps and `actions.py` what is done with their results; `evaluation.py`
is the paper's protocol; `runs.py` builds and restores a run's learner; the rest
keeps a run safe: `checkpoints.py`, `directory.py`, `runlock.py`, `stopping.py`,
`distribute.py`.
"""
