"""Numerical tests of the meta-learning algorithms on tiny float64 networks."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_segmenter

from meta_drn_tf.data.episodes import meta_batches, training_tasks
from meta_drn_tf.meta import MetaConfig, MetaLearner, Phase
from meta_drn_tf.meta.maml import query_objective
from meta_drn_tf.network.config import NetworkConfig
from meta_drn_tf.network.model import build_meta_drn

SIZE = 16


def _learner(algorithm, inner_lr=0.5, steps=1, optimizer=None, dtype="float64", width=0.0625):
    keras.utils.set_random_seed(0)
    model = build_meta_drn(NetworkConfig(SIZE, width), dtype)
    return MetaLearner(model, MetaConfig(algorithm=algorithm, inner_lr=inner_lr, inner_steps=steps), optimizer)


def _task(seed=0, dtype="float64"):
    rng = np.random.default_rng(seed)
    images = rng.uniform(size=(3, SIZE, SIZE, 3)).astype(dtype)
    masks = (images[..., :1] > 0.5).astype(dtype)
    return {"support_images": images[:1], "support_masks": masks[:1],
            "query_images": images[1:], "query_masks": masks[1:]}


def _directional_fd(learner, direction, task=None, phase=None, loss_weights=None, eps=1e-7):
    """Central difference of the meta-objective along `direction` (one tensor per meta-variable)."""
    task, phase = task or _task(), phase or Phase(second_order=True, multi_step_loss=False)
    saved = [v.numpy() for v in learner.meta_variables]

    def objective(sign):
        for v, s, d in zip(learner.meta_variables, saved, direction):
            v.assign(s + sign * eps * d.numpy())
        return float(query_objective(learner, task, phase, loss_weights)[0])

    plus, minus = objective(1), objective(-1)
    for v, s in zip(learner.meta_variables, saved):
        v.assign(s)
    return (plus - minus) / (2 * eps)


def _dot(grads, direction):
    return float(sum(tf.reduce_sum(g * d) for g, d in zip(grads, direction)))


def _random_direction(tensors, seed):
    rng = np.random.default_rng(seed)
    return [tf.constant(rng.normal(size=t.shape), t.dtype) for t in tensors]


@pytest.fixture(scope="module")
def maml():
    return _learner("maml")


def test_maml_meta_gradient_matches_finite_differences(maml):
    grads, _ = maml.algorithm.task_gradients(maml, _task())
    first_order = _learner("fomaml").algorithm.task_gradients(maml, _task())[0]
    for seed in range(3):
        v = _random_direction(maml.meta_variables, seed)
        fd = _directional_fd(maml, v)
        assert _dot(grads, v) == pytest.approx(fd, rel=1e-5, abs=1e-9)
        # The second-order term matters here, so the check can tell MAML from FOMAML.
        assert abs(_dot(first_order, v) - fd) > 1e-3 * abs(fd)


def _query_gradient(learner, weights, task):
    """d(query loss)/d weights, computed directly."""
    with tf.GradientTape() as tape:
        tape.watch(weights)
        loss = learner.loss(weights, task["query_images"], task["query_masks"])
    return tape.gradient(loss, weights)


def test_fomaml_gradient_is_query_gradient_at_adapted_weights(maml):
    fomaml = _learner("fomaml")
    task = _task()
    grads, _ = fomaml.algorithm.task_gradients(fomaml, task)
    fast = fomaml.adapt(task["support_images"], task["support_masks"])
    for g, h in zip(grads, _query_gradient(fomaml, fast, task)):
        np.testing.assert_allclose(g, h, rtol=1e-10, atol=1e-12)


def test_maml_with_zero_inner_rate_is_gradient_descent_on_query_loss():
    learner = _learner("maml", inner_lr=0.0)
    task = _task()
    grads, _ = learner.algorithm.task_gradients(learner, task)
    for g, h in zip(grads, _query_gradient(learner, learner.initial_weights(), task)):
        np.testing.assert_allclose(g, h, rtol=1e-10, atol=1e-12)


def test_reptile_with_sgd_moves_theta_toward_the_mean_adapted_weights():
    beta = 0.3
    learner = _learner("reptile", inner_lr=0.1, steps=3, optimizer=keras.optimizers.SGD(beta))
    tasks = [_task(0), _task(1)]
    theta = [t.numpy() for t in learner.initial_weights()]
    adapted = []
    for task in tasks:
        images = np.concatenate([task["support_images"], task["query_images"]])
        masks = np.concatenate([task["support_masks"], task["query_masks"]])
        adapted.append(learner.inner_loop(learner.initial_weights(), images, masks, 3, False)[0])
    batch = {k: np.stack([t[k] for t in tasks]) for k in tasks[0]}
    learner.meta_train_step(batch)
    for i, v in enumerate(learner.model.trainable_variables):
        mean_adapted = np.mean([a[i].numpy() for a in adapted], axis=0)
        np.testing.assert_allclose(v.numpy(), theta[i] + beta * (mean_adapted - theta[i]), rtol=1e-7, atol=1e-9)


def test_meta_sgd_learning_rates_get_the_finite_difference_gradient():
    learner = _learner("metasgd", inner_lr=0.3)
    grads, _ = learner.algorithm.task_gradients(learner, _task())
    n = len(learner.model.trainable_variables)
    for seed in range(2):
        v = [tf.zeros_like(t) for t in learner.model.trainable_variables] + _random_direction(learner.alphas, 10 + seed)
        fd = _directional_fd(learner, v)
        assert _dot(grads[n:], v[n:]) == pytest.approx(fd, rel=1e-5, abs=1e-9)
    theta = learner.model.trainable_variables
    assert len(learner.alphas) == n and all(a.shape == w.shape for a, w in zip(learner.alphas, theta))


def test_meta_sgd_rates_are_saved_and_restored(tmp_path):
    learner = _learner("metasgd", inner_lr=0.3)
    learner.alphas[0].assign(learner.alphas[0] * 2)
    path = tf.train.Checkpoint(learner=learner).save(str(tmp_path / "ckpt"))
    other = _learner("metasgd", inner_lr=0.3)
    tf.train.Checkpoint(learner=other).restore(path).assert_existing_objects_matched()
    np.testing.assert_array_equal(other.alphas[0].numpy(), learner.alphas[0].numpy())


def test_meta_train_step_is_traced_once_for_same_shape_batches(tiny_bank):
    batches = iter(meta_batches(training_tasks(tiny_bank, 1, 2, seed=0), 2))
    learner = MetaLearner(build_meta_drn(NetworkConfig(32, 0.0625)), MetaConfig("fomaml"))
    for _ in range(3):
        logs = learner.meta_train_step(next(batches))
    assert learner.trace_count == 1
    assert float(logs["finite"]) == 1.0 and np.isfinite(float(logs["loss"]))


def test_non_finite_gradients_skip_the_update():
    learner = _learner("maml", dtype="float32")
    before = [v.numpy() for v in learner.meta_variables]
    task = _task(dtype="float32")
    task["query_images"][0, 0, 0, 0] = np.nan
    logs = learner.meta_train_step({k: v[None] for k, v in task.items()})
    assert float(logs["finite"]) == 0.0
    for b, v in zip(before, learner.meta_variables):
        np.testing.assert_array_equal(b, v.numpy())
    assert int(learner.optimizer.iterations) == 0


def test_float16_loss_scale_halves_at_an_overflow_and_grows_after_good_steps_within_its_bounds():
    from meta_drn_tf.meta.learner import LOSS_SCALE_GROWTH_STEPS, MAX_LOSS_SCALE, next_loss_scale

    def after(scale, good, finite):
        scale, good = next_loss_scale(tf.constant(scale), tf.constant(good, tf.int64), finite)
        return float(scale), int(good)

    assert after(2.0**15, 7, False) == (2.0**14, 0)
    assert after(1.0, 0, False) == (1.0, 0)  # the floor: a step still non-finite here is no overflow
    assert after(2.0**15, 0, True) == (2.0**15, 1)
    assert after(2.0**15, LOSS_SCALE_GROWTH_STEPS - 1, True) == (2.0**16, 0)
    assert after(MAX_LOSS_SCALE, LOSS_SCALE_GROWTH_STEPS - 1, True) == (MAX_LOSS_SCALE, 0)


def test_meta_batch_of_b_tasks_averages_their_gradients():
    learner = _learner("fomaml", optimizer=keras.optimizers.SGD(1.0))
    tasks = [_task(0), _task(1), _task(2)]
    expected = [np.mean(x, axis=0) for x in zip(*[
        [g.numpy() for g in learner.algorithm.task_gradients(learner, t)[0]] for t in tasks])]
    theta = [v.numpy() for v in learner.model.trainable_variables]
    learner.meta_train_step({k: np.stack([t[k] for t in tasks]) for k in tasks[0]})
    for t, e, v in zip(theta, expected, learner.model.trainable_variables):
        np.testing.assert_allclose(v.numpy(), t - e, rtol=1e-9, atol=1e-12)


def test_query_predictions_do_not_depend_on_the_other_queries(maml):
    task = _task()
    fast = maml.adapt(task["support_images"], task["support_masks"])
    together = maml.predict(fast, task["query_images"]).numpy()
    alone = np.concatenate([maml.predict(fast, task["query_images"][i : i + 1]).numpy() for i in range(2)])
    np.testing.assert_allclose(together, alone, rtol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_mixed_precision_steps_keep_float32_weights_and_losses(precision, tiny_bank):
    config = MetaConfig("maml", precision=precision, inner_lr=1e-2)
    learner = MetaLearner(build_meta_drn(NetworkConfig(32, 0.0625), config.dtype_policy), config)
    batch = next(iter(meta_batches(training_tasks(tiny_bank, 1, 2, seed=0), 2)))
    logs = learner.meta_train_step(batch)
    assert logs["loss"].dtype == tf.float32 and np.isfinite(float(logs["loss"]))
    assert all(v.dtype == tf.float32 for v in learner.meta_variables)
    assert float(logs["finite"]) == 1.0


def test_xla_compiled_step_matches_the_plain_step(tiny_bank):
    batch = next(iter(meta_batches(training_tasks(tiny_bank, 1, 2, seed=0), 2)))
    results = []
    for jit in (False, True):
        keras.utils.set_random_seed(1)
        learner = MetaLearner(tiny_segmenter(32), MetaConfig("maml", inner_lr=1e-2, jit_compile=jit))
        learner.meta_train_step(batch)
        results.append([v.numpy() for v in learner.meta_variables])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("algorithm", ["fomaml", "maml", "metasgd", "reptile"])
def test_stock_and_cpu_kernel_policies_give_the_same_meta_gradients(algorithm, monkeypatch):
    """float64: TensorFlow's own ops (stock) and the CPU forms, Winograd in every 3x3 layer and kernel
    gradients tap by tap, give one meta-gradient."""
    from meta_drn_tf.network import conv

    task = _task()
    keras.utils.set_random_seed(0)
    stock = MetaLearner(build_meta_drn(NetworkConfig(SIZE, 0.0625), "float64"),
                        MetaConfig(algorithm=algorithm, inner_lr=0.5, kernels="stock"))
    stock_grads, _ = stock.algorithm.task_gradients(stock, task)
    keras.utils.set_random_seed(0)
    cpu = MetaLearner(build_meta_drn(NetworkConfig(SIZE, 0.0625), "float64"),
                      MetaConfig(algorithm=algorithm, inner_lr=0.5, kernels="cpu"),
                      winograd_min_channel_product=0, min_tap_flops=0)
    calls, kernel_gradient = [], conv._winograd_kernel_gradient
    monkeypatch.setattr(conv, "_winograd_kernel_gradient", lambda *args: calls.append(args) or kernel_gradient(*args))
    cpu_grads, _ = cpu.algorithm.task_gradients(cpu, task)
    assert calls  # Winograd's forms were used
    for a, b in zip(cpu_grads, stock_grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def _graph_config(algorithm: str, **settings) -> MetaConfig:
    """A config for graph walks: Reptile with 2 inner steps instead of its 5 (each step adds the same
    ops again, and tracing them cost the most of these tests)."""
    steps = {"inner_steps": 2} if algorithm == "reptile" else {}
    return MetaConfig(algorithm, **steps, **settings)


def _op_list(learner, epoch: int = 0) -> list[str]:
    from meta_drn_tf.bench.graphs import meta_step_graph, operations

    return [op.type for op in operations(meta_step_graph(learner, 1, 1, 1, 32, epoch))]


def _op_types(learner, epoch: int = 0) -> set[str]:
    return set(_op_list(learner, epoch))


@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "metasgd", "reptile"])
def test_stock_meta_steps_hold_tensorflows_own_ops_only(algorithm):
    """What a GPU gets (auto on an accelerator): no Winograd gathers and products, no per-tap kernel
    gradients, no fused-norm layout transposes; dilated convolutions' gradients in one op each."""
    learner = MetaLearner(build_meta_drn(NetworkConfig(32, 0.0625)), _graph_config(algorithm), device="gpu")
    assert learner.kernel_policy(second_order=True).dilated_gradients_in_one_op
    types = _op_types(learner)
    assert "Conv2DBackpropFilter" in types and "Conv2DBackpropInput" in types
    assert not types & {"BatchMatMulV2", "GatherV2", "FusedBatchNormV3", "SpaceToBatchND"}, types
    if algorithm == "fomaml":  # the same under the cpu policy, Winograd from every 3x3 layer: its ops are there
        cpu = MetaLearner(build_meta_drn(NetworkConfig(32, 0.0625)), MetaConfig(algorithm, kernels="cpu"), device="gpu",
                          winograd_min_channel_product=0)
        assert {"BatchMatMulV2", "GatherV2", "FusedBatchNormV3"} <= _op_types(cpu)


@pytest.mark.slow
def test_winograds_convolutions_except_in_the_memory_mode_and_bfloat16_second_order_steps():
    """The policy decides (every convolution of a step takes its kernels from `Adapter.logits`' policy);
    three traced steps show the graphs follow it, first- and second-order, with and without Winograd."""
    def learner(algorithm, **config):
        return MetaLearner(build_meta_drn(NetworkConfig(32, 0.0625)), MetaConfig(algorithm, kernels="cpu", **config),
                           winograd_min_channel_product=0)

    def winograd(algorithm, **config):
        policy = learner(algorithm, **config).kernel_policy(second_order=algorithm == "maml")
        return policy.winograd_min_channel_product is not None

    assert winograd("fomaml") and winograd("fomaml", precision="bfloat16") and winograd("maml")
    assert not winograd("maml", precision="bfloat16")  # its working set would reach the peer's
    assert not winograd("maml", memory_saving=True)  # the memory mode trades time for memory
    assert not winograd("fomaml", memory_saving=True)

    def batched_products(algorithm, **config):  # Winograd's 16 products per convolution: a BatchMatMulV2
        return _op_list(learner(algorithm, **config)).count("BatchMatMulV2")

    assert batched_products("fomaml") > 0
    assert batched_products("maml") > 0
    assert batched_products("maml", precision="bfloat16") == 0


@pytest.mark.parametrize("algorithm, first_order_epochs, fused", [
    ("fomaml", 0, True), ("reptile", 0, True), ("maml", 0, False), ("metasgd", 1, True)])
def test_only_first_order_meta_steps_use_fused_norms(algorithm, first_order_epochs, fused):
    """Fused batch-norm kernels have no second-order gradient: MAML's and Meta-SGD's second-order steps
    keep the closed form; first-order ones (MAML++'s first-order epochs too) take the fused kernels."""
    from meta_drn_tf.bench.graphs import meta_step_graph, operations

    learner = MetaLearner(build_meta_drn(NetworkConfig(32, 0.0625)),
                          _graph_config(algorithm, first_order_epochs=first_order_epochs, kernels="cpu"))
    types = {op.type for op in operations(meta_step_graph(learner, 1, 1, 1, 32))}
    assert ("FusedBatchNormGradV3" in types) == fused


def test_float16_memory_mode_keeps_the_second_order_part_of_the_meta_gradient():
    """float16 + --memory_saving: the backward pass through the inner loop is seeded with the scaled
    query gradients (seeded with unscaled ones it underflowed, and MAML became first-order MAML)."""
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(3, 32, 32, 3)).astype("float32")
    masks = (images[..., :1] > 0.5).astype("float32")
    task = {"support_images": images[:1], "support_masks": masks[:1], "query_images": images[1:],
            "query_masks": masks[1:]}

    def meta_gradient(algorithm, memory_saving=False):
        keras.utils.set_random_seed(0)
        config = MetaConfig(algorithm, inner_lr=0.5, precision="float16", memory_saving=memory_saving)
        learner = MetaLearner(build_meta_drn(NetworkConfig(32, 0.0625), config.dtype_policy), config)
        grads, _ = learner.algorithm.task_gradients(learner, task)
        return np.concatenate([np.ravel(g) for g in grads])

    def relative(a, b):
        return np.linalg.norm(a - b) / np.linalg.norm(b)

    maml = meta_gradient("maml")
    assert relative(meta_gradient("maml", memory_saving=True), maml) < 0.01  # measured 0.002
    assert relative(meta_gradient("fomaml"), maml) > 0.1  # the second-order part is that large (0.21)


@pytest.mark.parametrize("algorithm", ["maml", "reptile"])
def test_parallel_tasks_make_the_same_meta_update_as_one_at_a_time(algorithm, tiny_bank):
    batch = next(iter(meta_batches(training_tasks(tiny_bank, 1, 2, seed=0), 3)))
    results = []
    for parallel in (1, 3):
        keras.utils.set_random_seed(1)
        learner = MetaLearner(tiny_segmenter(32), MetaConfig(algorithm, inner_lr=1e-2, parallel_tasks=parallel))
        logs = learner.meta_train_step(batch)
        results.append([float(logs["loss"])] + [v.numpy() for v in learner.meta_variables])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_a_batch_with_a_task_count_uses_only_its_real_tasks(tiny_bank):
    """A replica's padded batch: tasks past its count change nothing."""
    batch = next(iter(meta_batches(training_tasks(tiny_bank, 1, 2, seed=0), 3)))
    padded = {k: np.concatenate([v, v[:1] * 0.0 + 0.5]) for k, v in batch.items()}
    results = []
    for b in (batch, {**padded, "tasks": np.int32(3)}):
        keras.utils.set_random_seed(1)
        learner = MetaLearner(tiny_segmenter(32), MetaConfig("fomaml", inner_lr=1e-2))
        learner.meta_train_step(b)
        results.append([v.numpy() for v in learner.meta_variables])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)


def test_an_algorithm_in_one_file_registers_and_meta_trains(tiny_bank):
    import toy_algorithm  # registers "joint": the extension recipe of meta/algorithm.py

    from meta_drn_tf.meta import register, registered

    assert "joint" in registered() and {"maml", "fomaml", "metasgd", "reptile"} <= set(registered())
    keras.utils.set_random_seed(0)
    learner = MetaLearner(tiny_segmenter(32), MetaConfig("joint", inner_lr=0.1, meta_lr=3e-2))
    before = [v.numpy() for v in learner.meta_variables]
    batches = meta_batches(training_tasks(tiny_bank, shots=1, queries=2, seed=0, augment=False), 4)
    losses = [float(learner.meta_train_step(batch)["loss"]) for batch in batches.take(25)]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses  # it learns
    assert all(not np.array_equal(a, v.numpy()) for a, v in zip(before, learner.meta_variables))
    with pytest.raises(ValueError, match="registered already"):
        register("joint")(type("Other", (toy_algorithm.JointTraining,), {}))


@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "metasgd", "reptile"])
def test_an_algorithm_needs_only_an_adapter_not_a_meta_learner(algorithm):
    """`AdapterInterface` names what a plain Adapter has: no optimizer, strategy or phase of training."""
    from meta_drn_tf.meta import Adapter
    from meta_drn_tf.meta.algorithm import AdapterInterface

    interface = {name for name in vars(AdapterInterface) if not name.startswith("_")} | {"config"}
    assert not [name for name in interface if not hasattr(Adapter, name) and name != "config"]
    learner = _learner(algorithm, steps=2)
    adapter = Adapter(build_meta_drn(NetworkConfig(SIZE, 0.0625), "float64"), learner.config)
    for target, source in zip(adapter.meta_variables, learner.meta_variables, strict=True):
        target.assign(source)
    task = _task()
    expected, expected_loss = learner.algorithm.task_gradients(learner, task)
    grads, loss = learner.algorithm.task_gradients(adapter, task)
    assert float(loss) == pytest.approx(float(expected_loss), rel=1e-12)
    for g, h in zip(grads, expected, strict=True):
        np.testing.assert_allclose(g, h, rtol=1e-10, atol=1e-14)
