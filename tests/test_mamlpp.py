"""MAML++ options (LSLR, multi-step loss, per-step norm, derivative-order annealing) and ANIL."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_meta import SIZE, _directional_fd, _dot, _random_direction, _task

from meta_drn_tf.errors import ConfigError
from meta_drn_tf.meta import MetaConfig, MetaLearner, Phase, multi_step_loss_weights
from meta_drn_tf.meta.maml import query_objective
from meta_drn_tf.network.config import NetworkConfig
from meta_drn_tf.network.model import build_meta_drn
from meta_drn_tf.runs.config import RunConfig
from meta_drn_tf.serving import saved_model as serving
from meta_drn_tf.training.evaluation import EpisodeScorer


def _learner(algorithm="maml", steps=2, seed=0, dtype="float64", **options):
    keras.utils.set_random_seed(seed)
    config = MetaConfig(algorithm=algorithm, inner_lr=0.3, inner_steps=steps, **options)
    return MetaLearner(build_meta_drn(NetworkConfig(SIZE, 0.0625), dtype), config)


def _scramble_extras(learner, seed=0):
    """Moves the learned rates and per-step norms off their initial values (which would hide index mistakes)."""
    rng = np.random.default_rng(seed)
    for v in learner.extra_variables:
        v.assign(v.numpy() * rng.uniform(0.5, 1.5, size=v.shape) + 0.05 * rng.normal(size=v.shape))


def test_multi_step_loss_weights_follow_the_maml_plus_plus_recipe():
    def reference(epoch, n, anneal):  # How to train your MAML, get_per_step_loss_importance_vector
        w = np.ones(n) / n
        decay, floor = 1.0 / n / anneal, 0.03 / n
        w[:-1] = np.maximum(w[:-1] - epoch * decay, floor)
        w[-1] = min(w[-1] + epoch * (n - 1) * decay, 1.0 - (n - 1) * floor)
        return w

    for n, anneal in ((2, 3), (5, 10)):
        for epoch in (0, 1, anneal // 2, anneal - 1, anneal + 4):
            got = multi_step_loss_weights(epoch, n, anneal).numpy()
            np.testing.assert_allclose(got, reference(epoch, n, anneal), rtol=1e-6)
            assert got.sum() == pytest.approx(1.0, abs=1e-6)


def test_maml_plus_plus_meta_gradient_matches_finite_differences():
    learner = _learner(lslr=True, per_step_norm=True, multi_step_loss_epochs=4)
    _scramble_extras(learner)
    phase, weights = Phase(second_order=True, multi_step_loss=True), tf.constant([0.3, 0.7], tf.float64)
    grads, _ = learner.algorithm.task_gradients(learner, _task(), phase, weights)
    assert len(grads) == len(learner.meta_variables)
    for seed in range(2):
        v = _random_direction(learner.meta_variables, seed)
        fd = _directional_fd(learner, v, phase=phase, loss_weights=weights)
        assert _dot(grads, v) == pytest.approx(fd, rel=1e-5, abs=1e-9)
    # Every extra (rates of both steps, the first step's norms) takes part.
    n = len(learner.model.trainable_variables)
    assert all(float(tf.reduce_max(tf.abs(g))) > 0 for g in grads[n:])


def test_multi_step_objective_is_the_weighted_query_losses_after_each_step():
    learner = _learner(steps=3, lslr=True, per_step_norm=True, multi_step_loss_epochs=2)
    _scramble_extras(learner, seed=1)
    task, weights = _task(), tf.constant([0.2, 0.3, 0.5], tf.float64)
    objective, final = query_objective(learner, task, Phase(True, True), weights)
    after = [float(learner.loss(learner.adapt(task["support_images"], task["support_masks"], inner_steps=s),
                                task["query_images"], task["query_masks"])) for s in (1, 2, 3)]
    assert float(final) == pytest.approx(after[-1], rel=1e-12)
    assert float(objective) == pytest.approx(float(np.dot(weights.numpy(), after)), rel=1e-12)


def test_first_order_lslr_gradient_is_minus_inner_gradient_dot_query_gradient():
    learner = _learner("fomaml", steps=1, lslr=True)
    task = _task()
    grads, _ = learner.algorithm.task_gradients(learner, task)
    theta = learner.initial_weights()
    with tf.GradientTape() as tape:
        tape.watch(theta)
        support_loss = learner.loss(theta, task["support_images"], task["support_masks"])
    inner = tape.gradient(support_loss, theta)
    fast = learner.adapt(task["support_images"], task["support_masks"])
    with tf.GradientTape() as tape:
        tape.watch(fast)
        query_loss = learner.loss(fast, task["query_images"], task["query_masks"])
    outer = tape.gradient(query_loss, fast)
    n = len(theta)
    for j in range(n):  # θ: the query gradient at the adapted weights; rate j: -<g_j, ∇_j L_q>
        np.testing.assert_allclose(grads[j], outer[j], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(grads[n + j], [-float(tf.reduce_sum(inner[j] * outer[j]))], rtol=1e-8)


@pytest.mark.slow
def test_derivative_order_annealing_is_first_order_then_second_order():
    learner = _learner(steps=1, first_order_epochs=2)
    assert [learner.phase(e).second_order for e in (0, 1, 2, 5)] == [False, False, True, True]
    task = _task()
    first, _ = learner.algorithm.task_gradients(learner, task, learner.phase(0))
    fomaml, _ = _learner("fomaml", steps=1).algorithm.task_gradients(learner, task)
    second, _ = learner.algorithm.task_gradients(learner, task, learner.phase(2))
    for a, b in zip(first, fomaml):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    assert max(float(tf.reduce_max(tf.abs(a - b))) for a, b in zip(first, second)) > 1e-6

    batch = {k: v[None].astype("float32") for k, v in _task(dtype="float32").items()}
    learner = _learner(steps=1, first_order_epochs=1, dtype="float32")
    for epoch in (0, 0, 1, 1, 2):
        learner.meta_train_step(batch, epoch)
    assert learner.trace_count == 2  # one trace per phase: the switch retraces exactly once


@pytest.mark.parametrize("layers, group", [("upsample", "upsample"), ("head", "head_conv")])
def test_anil_adapts_only_its_layers_but_meta_learns_all(layers, group):
    learner = _learner(steps=1, adapt_layers=layers)
    weights = learner.model.trainable_variables
    assert learner.adapted and all(weights[i].path.startswith(group) for i in learner.adapted)
    task = _task()
    fast = learner.adapt(task["support_images"], task["support_masks"])
    for i, (w, f) in enumerate(zip(weights, fast)):
        moved = float(tf.reduce_max(tf.abs(w - f)))
        assert (moved > 0) == (i in learner.adapted), weights[i].path
    grads, _ = learner.algorithm.task_gradients(learner, task)
    frozen = [g for i, g in enumerate(grads) if i not in learner.adapted]
    assert all(float(tf.reduce_max(tf.abs(g))) > 0 for g in frozen)
    v = _random_direction(learner.meta_variables, 3)
    assert _dot(grads, v) == pytest.approx(_directional_fd(learner, v), rel=1e-5, abs=1e-9)


@pytest.mark.slow
def test_learned_extras_are_checkpointed_and_exported(tmp_path):
    learner = _learner(steps=2, lslr=True, per_step_norm=True, dtype="float32")
    _scramble_extras(learner)
    path = tf.train.Checkpoint(learner=learner).save(str(tmp_path / "ckpt"))
    other = _learner(steps=2, lslr=True, per_step_norm=True, dtype="float32", seed=5)
    tf.train.Checkpoint(learner=other).restore(path).assert_existing_objects_matched()
    for a, b in zip(learner.meta_variables, other.meta_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # The export's inner loop uses them: its fast weights are the learner's.
    task = _task(dtype="float32")
    module = serving.serving_module(learner, NetworkConfig(SIZE, 0.0625))
    images = (task["support_images"] * 255).round().astype("uint8")
    exported = module.adapt(tf.constant(images), tf.constant(task["support_masks"][..., 0]))["fast_weights"]
    expected = learner.adapt(images.astype("float32") / 255, task["support_masks"])
    np.testing.assert_allclose(exported, tf.concat([tf.reshape(w, [-1]) for w in expected], 0), rtol=1e-5, atol=1e-6)
    # More test-time steps than trained reuse the last step's rates and norms.
    logs = EpisodeScorer(learner)({k: v[None] for k, v in task.items()}, inner_steps=4)
    assert np.isfinite(logs["loss"].numpy()).all()


def test_options_that_do_not_combine_with_the_algorithm_are_refused_together():
    with pytest.raises(ConfigError) as error:
        RunConfig.from_flags(algo="reptile", lslr=True, per_step_norm=True, first_order_epochs=2, adapt_layers="head")
    for flag in ("--lslr", "--per_step_norm", "--first_order_epochs", "--adapt_layers"):
        assert flag in str(error.value)
    with pytest.raises(ConfigError, match="metasgd already learns a rate for every weight; use --algo=maml or fomaml"):
        RunConfig.from_flags(algo="metasgd", lslr=True)
    with pytest.raises(ValueError, match="first_order_epochs"):
        MetaConfig("fomaml", first_order_epochs=1)


@pytest.mark.parametrize("algorithm, options", [("maml", {}), ("fomaml", {}), ("metasgd", {"adapt_layers": "head"})])
def test_memory_saving_gives_the_same_meta_gradient(algorithm, options):
    task = _task()
    task["query_images"] = np.concatenate([task["query_images"], task["query_images"][::-1, ::-1]])
    task["query_masks"] = np.concatenate([task["query_masks"], task["query_masks"][::-1, ::-1]])
    reference = _learner(algorithm, **options)
    expected, expected_loss = reference.algorithm.task_gradients(reference, task)
    saving = _learner(algorithm, memory_saving=True, **options)
    grads, loss = saving.algorithm.task_gradients(saving, task)
    assert float(loss) == pytest.approx(float(expected_loss), rel=1e-12)
    for g, e in zip(grads, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-9, atol=1e-12)
