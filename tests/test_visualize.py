import numpy as np

from meta_drn_tf.results import visualize


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


def test_line_chart_draws_each_curve_in_its_colour_where_its_values_are():
    chart = visualize.line_chart({"low": ([0, 10], [0.1, 0.1]), "high": ([0, 10], [0.9, 0.9])},
                                 "validation", "meta-step", "mIoU", size=(300, 500))
    assert chart.shape == (300, 500, 3) and chart.dtype == np.uint8
    low, high = visualize.PALETTE[0], visualize.PALETTE[1]
    column = chart[:, 200]  # inside the plot area
    rows_low = np.flatnonzero(np.abs(column.astype(int) - low).sum(1) < 30)
    rows_high = np.flatnonzero(np.abs(column.astype(int) - high).sum(1) < 30)
    assert rows_low.size and rows_high.size
    assert rows_high.max() < rows_low.min()  # the higher value is drawn higher up
