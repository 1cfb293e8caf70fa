"""What predicted masks are turned into: scores and pictures.

`metrics.py` scores a prediction against its mask (loss, IoU, confidence intervals); `visualize.py`
draws masks over photos, the paper's Fig. 4 grids and charts.
"""
