import numpy as np

from meta_drn_tf import visualize


def test_task_row_draws_support_green_and_prediction_red_with_iou_labels():
    image = np.full((32, 32, 3), 0.5, np.float32)
    mask = np.zeros((32, 32, 1), np.float32)
    mask[8:24, 8:24] = 1
    row = visualize.task_row(image, mask, image[None].repeat(2, 0), mask[None].repeat(2, 0), np.array([1.0, 0.25]))
    assert row.shape == (32, 96, 3) and row.dtype == np.uint8
    support, query = row[:, :32], row[:, 32:64]
    # Inside the mask: tinted green on the support, red on the query; outside untouched.
    assert support[16, 16, 1] > support[16, 16, 0] + 50
    assert query[16, 16, 0] > query[16, 16, 1] + 50
    np.testing.assert_array_equal(support[30, 30], [128, 128, 128])
    # The IoU label darkens the top-left corner of each query.
    assert query[:6, :12].mean() < 100


def test_grid_pads_rows_of_different_widths():
    a, b = np.zeros((4, 10, 3), np.uint8), np.zeros((4, 6, 3), np.uint8)
    g = visualize.grid([a, b], gap=2)
    assert g.shape == (10, 10, 3)
    assert (g[6:, 6:] == 255).all()
