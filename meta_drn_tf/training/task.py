"""`MetaTrainingTask`: the steps the controller runs - meta-batches, the meta-train step, validation."""

from __future__ import annotations

import tensorflow as tf

from meta_drn_tf.data.benchmarks import Benchmark
from meta_drn_tf.data.episodes import BankTensors, file_training_tasks, training_tasks
from meta_drn_tf.meta.learner import TASK_COUNT_KEY
from meta_drn_tf.runs.config import RunConfig
from meta_drn_tf.training import distribute
from meta_drn_tf.training.evaluation import EpisodeScorer, evaluate_bank, evaluate_sampled


class MetaTrainingTask:
    """What one run trains and validates on, unaware of the loop around it.

    Args:
        config: the run.
        learner: the MetaLearner (variables under `strategy`).
        strategy: the tf.distribute strategy the steps run under.
        train_bank, val_bank: the training and validation classes: ImageBanks, or Benchmarks (PASCAL-5i,
            COCO-20i) whose tasks and episodes are read from their files as they are needed.
    """

    def __init__(self, config: RunConfig, learner, strategy: tf.distribute.Strategy, train_bank, val_bank):
        self.config, self.learner, self.strategy = config, learner, strategy
        self.val_bank = val_bank
        self.scorer = EpisodeScorer(learner)  # one trace for every epoch's validation
        self.per_replica = distribute.tasks_per_replica(config.trainer.meta_batch_size, strategy)
        if isinstance(train_bank, Benchmark):
            self.source, images = train_bank, train_bank.num_samples
        else:
            self.source, images = BankTensors(train_bank), int(train_bank.counts.sum())
        tasks_per_epoch = config.trainer.tasks_per_epoch or images
        self.steps_per_epoch = max(1, tasks_per_epoch // config.trainer.meta_batch_size)

    def batches(self, start_step: int, remaining: int):
        """The distributed meta-batches of global steps start_step, ..., start_step + remaining - 1."""
        config, data, per_replica = self.config, self.config.data, self.per_replica
        meta_batch = config.trainer.meta_batch_size

        def dataset_fn(context: tf.distribute.InputContext):
            local_replicas = context.num_replicas_in_sync // context.num_input_pipelines
            ids, counts = distribute.replica_task_ids(start_step, remaining, meta_batch, context.num_replicas_in_sync,
                                                      local_replicas, context.input_pipeline_id)
            if isinstance(self.source, Benchmark):
                tasks = file_training_tasks(self.source, config.network.image_size, data.shots, data.queries,
                                            seed=config.seed, task_ids=ids)
            else:
                tasks = training_tasks(self.source, data.shots, data.queries, seed=config.seed, task_ids=ids)
            batches = tf.data.Dataset.zip(tasks.batch(per_replica, drop_remainder=True), counts)
            return batches.map(lambda batch, count: {**batch, TASK_COUNT_KEY: count}).prefetch(tf.data.AUTOTUNE)

        return self.strategy.distribute_datasets_from_function(dataset_fn)

    def train_step(self, batch, epoch: int) -> dict[str, tf.Tensor]:
        """One meta-update; its logs stay on the device."""
        return self.learner.meta_train_step(batch, epoch)

    def validate(self) -> tuple[dict, list]:
        """The evaluation protocol on the validation classes: the summary and four adapted tasks (a
        Benchmark's: its seeded episodes, `val_episodes` of them or the field's count)."""
        if isinstance(self.val_bank, Benchmark):
            result, kept = evaluate_sampled(self.scorer, self.val_bank, self.config.network.image_size,
                                            self.config.data.shots, self.config.trainer.val_episodes or None,
                                            seed=self.config.seed, inner_steps=self.config.trainer.eval_inner_steps,
                                            keep_predictions=4)
            return result.summary(), kept
        result, kept = evaluate_bank(self.scorer, self.val_bank, self.config.data.shots,
                                     self.config.trainer.val_episodes or None,
                                     inner_steps=self.config.trainer.eval_inner_steps, keep_predictions=4)
        return result.summary(), kept
