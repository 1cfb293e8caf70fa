"""The Meta-DRN network: its layers, the model, the normalization and convolution forms.

`model.py` builds the network (`build_meta_drn`) from the layers of `layers.py`;
`conv.py` and `norm.py` are the forms those layers compute with, chosen per call by
a `kernels.KernelPolicy` (`kernels.py`: stock TensorFlow ops, or CPU-tuned forms).
"""
