"""Training: the loop, its actions, evaluation, and what keeps a run going.

`trainer.py` assembles a run (`train`); `controller.py` owns the loop's cadence,
`task.py` supplies its steps and `actions.py` what is done with their results
(TensorBoard, the best checkpoint, the final test, the export); `schedules.py` are
the meta learning rates; `evaluation.py` is the paper's protocol; `checkpoints.py`,
`stopping.py` and `distribute.py` keep a run resumable, stoppable and spread over
devices. A run's settings and directory are `meta_drn_tf.runs`.
"""
