"""On a real GPU (`python tools/gpu_check.py`; skipped elsewhere): the policy a GPU gets, every
precision with and without XLA, mirrored replicas, parallel tasks, and a stock export."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_segmenter

from meta_drn_tf.meta import MetaConfig, MetaLearner
from meta_drn_tf.network.config import NetworkConfig
from meta_drn_tf.network.model import build_meta_drn
from meta_drn_tf.serving import saved_model as serving

pytestmark = pytest.mark.gpu
SIZE, WIDTH = 32, 0.0625


@pytest.fixture(autouse=True)
def _gpu_without_tf32():
    """A visible GPU, and exact float32 products (TensorFloat-32 would round them to 10 bits)."""
    if not tf.config.list_physical_devices("GPU"):
        pytest.skip("no GPU visible to TensorFlow")
    tf.config.experimental.enable_tensor_float_32_execution(False)
    yield
    tf.config.experimental.enable_tensor_float_32_execution(True)


def _task(meta_batch=None, seed=0):
    rng = np.random.default_rng(seed)
    shape = (3, SIZE, SIZE, 3) if meta_batch is None else (meta_batch, 3, SIZE, SIZE, 3)
    images = rng.uniform(size=shape).astype("float32")
    masks = (images[..., :1] > 0.5).astype("float32")
    return {"support_images": images[..., :1, :, :, :], "support_masks": masks[..., :1, :, :, :],
            "query_images": images[..., 1:, :, :, :], "query_masks": masks[..., 1:, :, :, :]}


def _flat(grads):
    return np.concatenate([np.ravel(g) for g in grads])


@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "metasgd", "reptile"])
def test_auto_is_the_stock_policy_here_and_matches_the_cpu_forms(algorithm):
    keras.utils.set_random_seed(0)
    gpu = MetaLearner(build_meta_drn(NetworkConfig(SIZE, WIDTH)), MetaConfig(algorithm, inner_lr=0.5))
    assert gpu.device == "gpu" and gpu.kernel_policy(True).name == "stock"
    assert gpu.kernel_policy(True).dilated_gradients_in_one_op
    task = _task()
    ours = _flat(gpu.algorithm.task_gradients(gpu, task)[0])
    with tf.device("/CPU:0"):
        cpu = MetaLearner(build_meta_drn(NetworkConfig(SIZE, WIDTH)),
                          MetaConfig(algorithm, inner_lr=0.5, kernels="cpu"), device="cpu")
        for target, source in zip(cpu.meta_variables, gpu.meta_variables, strict=True):
            target.assign(source.numpy())  # the same weights, whatever each device's random numbers
        theirs = _flat(cpu.algorithm.task_gradients(cpu, task)[0])
    assert np.linalg.norm(ours - theirs) <= 1e-4 * np.linalg.norm(theirs)


@pytest.mark.parametrize("precision", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "metasgd", "reptile"])
def test_meta_steps_train_in_every_precision_with_and_without_xla(algorithm, precision, jit):
    keras.utils.set_random_seed(0)
    config = MetaConfig(algorithm, inner_lr=0.1, precision=precision, jit_compile=jit)
    learner = MetaLearner(build_meta_drn(NetworkConfig(SIZE, WIDTH), config.dtype_policy), config)
    before = [v.numpy() for v in learner.meta_variables]
    logs = learner.meta_train_step(_task(meta_batch=2))
    assert float(logs["finite"]) == 1.0 and np.isfinite(float(logs["loss"]))
    assert any(np.abs(v.numpy() - b).max() > 0 for v, b in zip(learner.meta_variables, before))


def test_mirrored_replicas_with_xla_on_the_gpus():
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    strategy = tf.distribute.MirroredStrategy(gpus)
    with strategy.scope():
        keras.utils.set_random_seed(0)
        learner = MetaLearner(tiny_segmenter(SIZE), MetaConfig("maml", inner_lr=0.1, jit_compile=True),
                              strategy=strategy)
    batch = _task(meta_batch=len(gpus))
    dataset = tf.data.Dataset.from_tensors(batch).unbatch().batch(len(gpus))
    element = next(iter(strategy.experimental_distribute_dataset(dataset)))
    logs = learner.meta_train_step(element)
    assert float(logs["finite"]) == 1.0


def test_the_whole_meta_batch_at_once_gives_the_same_meta_gradient():
    """Compared through the step's loss and gradient norm: the update itself (Adam's first step is
    about the gradient's sign) would magnify a GPU's reordered sums in near-zero entries."""
    results = []
    for parallel in (1, None):  # None: auto, the whole meta-batch on a GPU
        keras.utils.set_random_seed(1)
        learner = MetaLearner(tiny_segmenter(SIZE), MetaConfig("maml", inner_lr=1e-2, parallel_tasks=parallel))
        assert learner.parallel_tasks == (1 if parallel else None)
        logs = learner.meta_train_step(_task(meta_batch=4))
        results.append([float(logs["loss"]), float(logs["grad_norm"])])
    np.testing.assert_allclose(results[0], results[1], rtol=1e-4)


def _request():
    rng = np.random.default_rng(0)
    support = rng.integers(0, 256, (1, SIZE, SIZE, 3), dtype=np.uint8)
    mask = np.zeros((1, SIZE, SIZE), np.float32)
    mask[:, 8:16, 8:24] = 1
    queries = rng.integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    return {"support_images": tf.constant(support), "support_masks": tf.constant(mask),
            "query_images": tf.constant(queries), "threshold": tf.constant([], tf.float32)}


def _serve(model, device):
    with tf.device(device):
        return model.signatures["serving_default"](**_request())["probabilities"].numpy()


def test_a_stock_export_serves_the_same_masks_on_the_gpu_and_on_the_cpu(tmp_path):
    keras.utils.set_random_seed(4)
    learner = MetaLearner(build_meta_drn(NetworkConfig(SIZE, WIDTH)), MetaConfig("maml", inner_lr=0.5))
    model = tf.saved_model.load(serving.export(learner, str(tmp_path / "m"), NetworkConfig(SIZE, WIDTH)))
    np.testing.assert_allclose(_serve(model, "/GPU:0"), _serve(model, "/CPU:0"), atol=1e-4)


def test_a_gpu_export_adapts_on_the_gpu_to_the_stock_exports_masks(tmp_path):
    """--kernels=gpu: dilated convolutions and their gradients as single cuDNN ops, same masks."""
    keras.utils.set_random_seed(4)
    learner = MetaLearner(build_meta_drn(NetworkConfig(SIZE, WIDTH)), MetaConfig("maml", inner_lr=0.5))
    stock, gpu = (tf.saved_model.load(serving.export(learner, str(tmp_path / k), NetworkConfig(SIZE, WIDTH), kernels=k))
                  for k in ("stock", "gpu"))
    np.testing.assert_allclose(_serve(gpu, "/GPU:0"), _serve(stock, "/GPU:0"), atol=1e-4)
