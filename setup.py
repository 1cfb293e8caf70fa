from setuptools import find_packages, setup

setup(
    name="meta_drn_tf",
    version="0.1.0",
    description="Meta-DRN: meta-learned 1-shot image segmentation in TensorFlow/Keras 3",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["meta_drn_tf", "meta_drn_tf.*"]),
    package_data={"meta_drn_tf.data": ["splits/*.txt"]},
    install_requires=[
        "tensorflow>=2.20",
        "keras>=3.10",
        "numpy",
        "opencv-python-headless",
        "absl-py",
        "tensorboard",
    ],
    extras_require={
        "and-cuda": ["tensorflow[and-cuda]>=2.20"],
        "test": ["pytest", "pytest-timeout"],
    },
)
