"""runtime.metrics against scikit-learn and an independent brute-force AU-PRO."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, f1_score, precision_recall_curve, roc_auc_score

from runtime import metrics
from runtime.metrics import UndefinedMetricWarning

ROOT = Path(__file__).resolve().parents[1]
SEVEN = ("i_auroc", "i_ap", "i_f1max", "p_auroc", "p_ap", "p_f1max", "aupro")
EIGHT_CONNECTED = np.ones((3, 3), int)
FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


def _sklearn_f1max(scores, labels):
    precision, recall, _ = precision_recall_curve(labels, scores)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    return f1.max()


def _brute_force_aupro(maps, masks, structure, fpr_limit=0.3):
    """Threshold sweep over every distinct score: PRO by explicit region overlap, FPR over all normal pixels."""
    regions = []
    for score_map, mask in zip(maps, masks):
        labelled, count = ndimage.label(mask > 0, structure=structure)
        regions += [score_map[labelled == k] for k in range(1, count + 1)]
    normal = maps[masks == 0]
    xs, ys = [0.0], [0.0]
    for threshold in np.unique(maps)[::-1]:
        xs.append(np.mean(normal >= threshold))
        ys.append(np.mean([np.mean(region >= threshold) for region in regions]))
    area = 0.0
    for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:]):
        if x0 >= fpr_limit:
            break
        if x1 <= fpr_limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_limit = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            area += (fpr_limit - x0) * (y0 + y_limit) / 2
    return area / fpr_limit


def _image_data(seed, n=300, decimals=None, positive_rate=0.3):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < positive_rate).astype(int)
    labels[:2] = [0, 1]
    scores = rng.normal(size=n) + 0.8 * labels
    return (np.round(scores, decimals) if decimals is not None else scores), labels


def _pixel_data(seed, n=6, size=20, decimals=2):
    """Maps with tied scores; masks with rectangles, single pixels and diagonal touches; one normal image."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), np.uint8)
    for mask in masks[1:]:
        for _ in range(rng.integers(1, 4)):
            top, left = rng.integers(0, size - 5, 2)
            height, width = rng.integers(1, 6, 2)
            mask[top : top + height, left : left + width] = 1
        row, col = rng.integers(1, size - 1, 2)
        mask[row, col] = mask[row + 1, col + 1] = 255  # a diagonal pair: one region only with 8-connectivity
    maps = rng.random((n, size, size)) + 0.6 * masks.astype(bool) * rng.random((n, size, size))
    return np.round(maps, decimals).astype(np.float32), masks


def _seven(value=0.5):
    return dict.fromkeys(SEVEN, value)


# ------------------------------------------------------------------------------------------- scikit-learn parity


@pytest.mark.parametrize("decimals", [None, 2, 1, 0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_metrics_match_sklearn_with_ties(seed, decimals):
    scores, labels = _image_data(seed, decimals=decimals, positive_rate=[0.05, 0.3, 0.7][seed])
    assert metrics.auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    assert metrics.average_precision(scores, labels) == pytest.approx(average_precision_score(labels, scores), abs=1e-9)
    best, threshold = metrics.f1_max(scores, labels)
    assert best == pytest.approx(_sklearn_f1max(scores, labels), abs=1e-9)
    assert f1_score(labels, scores >= threshold) == pytest.approx(best, abs=1e-9)


def test_pixel_metrics_match_sklearn_with_ties():
    maps, masks = _pixel_data(0)
    labels, scores = masks.ravel() > 0, maps.ravel()
    assert len(np.unique(scores)) < scores.size / 10  # heavy ties
    result = metrics.compute(maps.max(axis=(1, 2)), masks.max(axis=(1, 2)), maps, masks)
    assert result["p_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    assert result["p_ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-9)
    assert result["p_f1max"] == pytest.approx(_sklearn_f1max(scores, labels), abs=1e-9)


def test_float64_scores_are_not_rounded_to_float32():
    scores = np.array([1.0, 1.0 + 1e-12, 0.5, 2.0])
    labels = np.array([0, 1, 0, 1])
    assert metrics.auroc(scores, labels) == roc_auc_score(labels, scores) == 1.0


# ------------------------------------------------------------------------------------------------------ AU-PRO


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aupro_matches_brute_force_sweep(seed):
    maps, masks = _pixel_data(seed)
    expected = _brute_force_aupro(maps, masks, EIGHT_CONNECTED)
    assert metrics.aupro(maps, masks) == pytest.approx(expected, abs=1e-6)
    assert metrics.compute(maps.max(axis=(1, 2)), masks.max(axis=(1, 2)), maps, masks)["aupro"] == pytest.approx(
        expected, abs=1e-6
    )


def test_aupro_other_fpr_limit_matches_brute_force():
    maps, masks = _pixel_data(3, decimals=3)
    assert metrics.aupro(maps, masks, fpr_limit=0.05) == pytest.approx(
        _brute_force_aupro(maps, masks, EIGHT_CONNECTED, fpr_limit=0.05), abs=1e-6
    )


def test_aupro_joins_diagonally_touching_pixels_into_one_region():
    rng = np.random.default_rng(0)
    maps = rng.uniform(0.1, 0.9, (2, 8, 8)).astype(np.float32)
    masks = np.zeros((2, 8, 8), bool)
    masks[0, 0:3, 0:3] = True  # 9 pixels scoring low ...
    maps[0, 0:3, 0:3] = 0.05
    masks[0, 3, 3] = True  # ... and one diagonal neighbour scoring high: 1/10 of the region, not a region of its own
    maps[0, 3, 3] = 1.0
    masks[1, 5:7, 1:5] = True
    ours = metrics.aupro(maps, masks)
    eight = _brute_force_aupro(maps, masks, EIGHT_CONNECTED)
    four = _brute_force_aupro(maps, masks, FOUR_CONNECTED)
    assert ours == pytest.approx(eight, abs=1e-6)
    assert abs(four - eight) > 0.05


def test_aupro_without_defects_is_nan_with_warning():
    maps = np.random.default_rng(0).random((2, 8, 8))
    with pytest.warns(UndefinedMetricWarning, match="aupro"):
        assert math.isnan(metrics.aupro(maps, np.zeros((2, 8, 8), np.uint8)))


# ------------------------------------------------------------------------------------ honesty and edge cases


def test_auroc_below_half_is_not_flipped():
    scores, labels = _image_data(0)
    value = metrics.auroc(-scores, labels)
    assert value < 0.5
    assert value == pytest.approx(roc_auc_score(labels, -scores), abs=1e-9)
    maps, masks = _pixel_data(0)
    result = metrics.compute(-maps.max(axis=(1, 2)), masks.max(axis=(1, 2)), -maps, masks)
    assert result["i_auroc"] < 0.5 and result["p_auroc"] < 0.5


def test_single_label_gives_nan_and_names_the_metric():
    scores = np.linspace(0, 1, 10)
    with pytest.warns(UndefinedMetricWarning, match="auroc"):
        assert math.isnan(metrics.auroc(scores, np.zeros(10)))
    with pytest.warns(UndefinedMetricWarning, match="average_precision"):
        assert math.isnan(metrics.average_precision(scores, np.zeros(10)))
    with pytest.warns(UndefinedMetricWarning, match="f1_max"):
        assert all(map(math.isnan, metrics.f1_max(scores, np.zeros(10))))
    with pytest.warns(UndefinedMetricWarning, match="i_auroc"):
        result = metrics.compute(scores, np.ones(10))
    assert math.isnan(result["i_auroc"]) and result["i_ap"] == 1.0 and result["i_f1max"] == 1.0
    assert math.isnan(result["mad"])


def test_nan_scores_are_rejected():
    with pytest.raises(ValueError, match="NaN"):
        metrics.auroc(np.array([0.1, np.nan, 0.3]), np.array([0, 1, 1]))


def test_maps_without_masks_are_rejected():
    with pytest.raises(ValueError, match="together"):
        metrics.compute(np.zeros(2), np.array([0, 1]), anomaly_maps=np.zeros((2, 4, 4)))


# ---------------------------------------------------------------------------------------------- compute / mAD


def test_compute_keys_and_mad_is_mean_of_seven():
    maps, masks = _pixel_data(1)
    scores, labels = maps.max(axis=(1, 2)), masks.max(axis=(1, 2)) > 0
    scores[0] = scores.max()  # the normal image outranks some anomalous ones: image metrics below 1
    result = metrics.compute(scores, labels, maps, masks)
    assert tuple(result) == metrics.KEYS and all(isinstance(v, float) for v in result.values())
    assert len({result[key] for key in SEVEN}) > 2
    assert result["mad"] == pytest.approx(np.mean([result[key] for key in SEVEN]), abs=1e-12)


def test_compute_without_maps_averages_the_image_metrics():
    scores, labels = _image_data(0)
    result = metrics.compute(scores, labels)
    assert all(math.isnan(result[key]) for key in ("p_auroc", "p_ap", "p_f1max", "aupro"))
    assert result["mad"] == pytest.approx(np.mean([result["i_auroc"], result["i_ap"], result["i_f1max"]]))


# -------------------------------------------------------------------------------------------------- per_class


def test_per_class_rows_sorted_and_mean_row():
    maps, masks = _pixel_data(2, n=9)
    masks[[1, 5]] = 0  # with image 0: one normal image per class
    labels = masks.max(axis=(1, 2)) > 0
    scores = maps.max(axis=(1, 2))
    classes = np.array(["zipper", "bottle", "cable"] * 3)
    rows = metrics.per_class(classes, scores, labels, maps, masks)
    assert [row["class"] for row in rows] == ["bottle", "cable", "zipper", "mean"]
    for row in rows[:3]:
        index = classes == row["class"]
        assert row["i_auroc"] == pytest.approx(roc_auc_score(labels[index], scores[index]), abs=1e-9)
        assert row["p_auroc"] == pytest.approx(roc_auc_score(masks[index].ravel() > 0, maps[index].ravel()), abs=1e-9)
    for key in metrics.KEYS:
        assert rows[-1][key] == pytest.approx(np.mean([row[key] for row in rows[:3]]), abs=1e-12)


def test_per_class_mean_ignores_a_class_with_one_label():
    scores, labels = _image_data(0, n=60)
    classes = np.array(["a", "b"] * 30)
    labels[classes == "b"] = 0
    with pytest.warns(UndefinedMetricWarning) as record:
        rows = metrics.per_class(classes, scores, labels)
    assert sorted(str(w.message).split()[0] for w in record) == ["i_ap", "i_auroc", "i_f1max"]
    assert math.isnan(rows[1]["i_auroc"])
    assert rows[2]["i_auroc"] == rows[0]["i_auroc"]


# ------------------------------------------------------------------------------------------------------ tables


def test_markdown_and_csv_tables(tmp_path):
    rows = [{"class": "bottle", **_seven(0.5), "mad": 0.5}, {"class": "mean", **_seven(0.25), "mad": math.nan}]
    lines = metrics.to_markdown(rows, digits=2).splitlines()
    assert lines[0] == "| Class | I-AUROC | I-AP | I-F1max | P-AUROC | P-AP | P-F1max | AU-PRO | mAD |"
    assert lines[2] == "| bottle | 0.50 | 0.50 | 0.50 | 0.50 | 0.50 | 0.50 | 0.50 | 0.50 |"
    assert lines[3].startswith("| mean | 0.25 |") and lines[3].endswith("| nan |")
    path = tmp_path / "metrics.csv"
    metrics.to_csv(rows, path)
    text = path.read_text().splitlines()
    assert text[0] == "class,I-AUROC,I-AP,I-F1max,P-AUROC,P-AP,P-F1max,AU-PRO,mAD"
    assert text[2] == "mean," + ",".join(["0.25"] * 7) + ",nan"


# --------------------------------------------------------------------------------------------------- benchmark


@pytest.mark.torch  # benchmarks imports everything
def test_benchmark_runs_small(capsys):
    from benchmarks import metrics_bench

    metrics_bench.main(["--n", "6", "--size", "32"])
    assert "| 6 | 32 | 6,144 |" in capsys.readouterr().out


@pytest.mark.slow
def test_full_size_pixel_metrics_within_budget():
    code = (
        "import json; from benchmarks.metrics_bench import measure; "
        "figures = measure(); del figures['metrics']; print(json.dumps(figures))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    figures = json.loads(out.stdout)
    assert figures["pixels"] == 1725 * 256 * 256
    assert figures["seconds"] <= 60 and figures["peak_increase_mb"] <= 6 * 1024
