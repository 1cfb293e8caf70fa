import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# GPUs are hidden from every test but those marked `gpu`, which run in a pytest of their own with
# META_DRN_GPU_TESTS=1 (`python tools/gpu_check.py`): CUDA_VISIBLE_DEVICES must be set before
# TensorFlow starts, once per process.
GPU_TESTS = os.environ.get("META_DRN_GPU_TESTS") == "1"
if not GPU_TESTS:
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    # The modules with long tests (`slow`: whole runs, subprocesses) first, each module's tests kept
    # together (its module fixtures are made once): with `-n 2` the short ones then fill both
    # workers to the end, instead of one worker finishing a long test alone.
    has_slow = {item.module.__name__ for item in items if "slow" in item.keywords}
    items.sort(key=lambda item: item.module.__name__ not in has_slow)
    if GPU_TESTS:
        return
    skip = pytest.mark.skip(reason="GPU test: run `python tools/gpu_check.py` on a machine with a GPU "
                                   "(this run hides GPUs)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

REAL_FEWSHOT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "real_fewshot")


@pytest.fixture(scope="session")
def real_fewshot_dir():
    if not os.path.isdir(REAL_FEWSHOT):
        pytest.skip("../shared/data/real_fewshot is not present")
    return REAL_FEWSHOT


@pytest.fixture(scope="session")
def tiny_bank():
    from meta_drn_tf.data.synthetic import synthetic_bank

    return synthetic_bank(num_classes=6, images_per_class=6, image_size=32, seed=3)


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    """Keeps Keras's global state (names, traced graphs) from growing over the suite. Python's own
    collector frees the rest when it runs: a full collection after every test took 2-6 s each
    late in the suite (the heap of everything TensorFlow traced so far)."""
    yield
    import keras

    keras.backend.clear_session(free_memory=False)


def tiny_segmenter(size: int, dtype: str | None = None):
    """A two-conv segmentation network with per-image BatchNorm: cheap to trace, same mechanics."""
    import keras

    from meta_drn_tf.network.layers import ConvNormAct

    inputs = keras.Input((size, size, 3))
    x = ConvNormAct(4, dtype=dtype, name="conv1")(inputs)
    logits = keras.layers.Conv2D(1, 3, padding="same", dtype=dtype, name="logits")(x)
    return keras.Model(inputs, logits)
