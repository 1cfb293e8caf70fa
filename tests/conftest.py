import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402

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
