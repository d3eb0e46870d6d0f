"""runtime.visualize: heatmap range, contours where the masks are, grid geometry."""
import numpy as np

from runtime.visualize import draw_contour, grid, heatmap, label, overlay, write_rgb


def test_heatmap_uses_the_fixed_range():
    values = np.array([[0.0, 1.0], [2.0, 5.0]], np.float32)
    heat = heatmap(values, vmin=0.0, vmax=2.0)
    assert heat.shape == (2, 2, 3) and heat.dtype == np.uint8
    assert np.array_equal(heat[1, 0], heat[1, 1])  # clipped at vmax
    assert heat[0, 0, 2] > heat[0, 0, 0] and heat[1, 0, 0] > heat[1, 0, 2]  # low = blue, high = red


def test_contours_follow_the_masks():
    image = np.zeros((32, 32, 3), np.uint8)
    gt = np.zeros((32, 32), np.uint8)
    gt[8:16, 8:16] = 1
    out = overlay(image, np.zeros((32, 32)), 0, 1, alpha=0.0, gt_mask=gt, pred_mask=np.zeros((32, 32)))
    white = np.all(out == 255, axis=2)
    assert white[8, 8:16].all() and white[15, 8:16].all() and not white[12, 12] and white.sum() == 28
    red = draw_contour(image, gt, (255, 0, 0))
    assert red[8, 8].tolist() == [255, 0, 0]


def test_grid_label_and_write(tmp_path):
    tiles = [np.full((10, 20, 3), i * 40, np.uint8) for i in range(5)]
    g = grid(tiles, columns=2, pad=1)
    assert g.shape == (3 * 11 - 1, 2 * 21 - 1, 3)
    assert g[0, 21].tolist() == [40, 40, 40] and g[10, 0].tolist() == [0, 0, 0]
    labelled = label(np.zeros((64, 128, 3), np.uint8), "scratch")
    assert labelled[:10].any()
    write_rgb(str(tmp_path / "g.png"), g)
    assert (tmp_path / "g.png").stat().st_size > 0
