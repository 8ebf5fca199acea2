import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from training.metrics import PixelMetricAccumulator, pixel_metrics


def random_case(seed, n=5, size=48, levels=None):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        for _ in range(rng.integers(0, 4)):
            y, x = rng.integers(0, size - 8, 2)
            h, w = rng.integers(2, 12, 2)
            masks[i, y : y + h, x : x + w] = rng.integers(1, 4)
    masks[0, 1:4, 1:4] = 1  # at least one region
    scores = rng.random(masks.shape) * 0.8 + (masks > 0) * rng.random(masks.shape) * 0.6
    if levels:
        scores = np.round(scores * levels) / levels  # ties, as real maps have
    return scores, masks


def reference_aupro(scores, masks, max_fpr=0.3):
    """Straightforward MVTec AUPRO: loop over every distinct threshold."""
    regions = []
    for i, m in enumerate(masks > 0):
        labels, n = ndimage.label(m, structure=np.ones((3, 3)))
        regions += [(i, labels == k) for k in range(1, n + 1)]
    normal = masks == 0
    fprs, pros = [0.0], [0.0]
    for t in np.unique(scores)[::-1]:
        hit = scores >= t
        fprs.append(hit[normal].mean())
        pros.append(np.mean([hit[i][r].mean() for i, r in regions]))
    fprs, pros = np.array(fprs), np.array(pros)
    j = np.searchsorted(fprs, max_fpr, side="right")
    x, y = list(fprs[:j]), list(pros[:j])
    if j < len(fprs):
        x.append(max_fpr)
        y.append(np.interp(max_fpr, fprs[j - 1 : j + 1], pros[j - 1 : j + 1]))
    return np.trapezoid(y, x) / max_fpr


@pytest.mark.parametrize(("seed", "levels"), [(0, None), (1, 20), (2, 100), (3, None)])
def test_exact_metrics_match_independent_computations(seed, levels):
    scores, masks = random_case(seed, levels=levels)
    got = pixel_metrics(scores, masks)
    y, s = (masks > 0).ravel(), scores.ravel()
    assert got["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-6)
    assert got["ap"] == pytest.approx(average_precision_score(y, s), abs=1e-6)
    p, r, t = precision_recall_curve(y, s)
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0)[:-1]
    assert got["f1_max"] == pytest.approx(f1.max(), abs=1e-6)
    assert got["f1_threshold"] == pytest.approx(t[f1.argmax()])
    assert got["aupro"] == pytest.approx(reference_aupro(scores, masks), abs=1e-3)


@pytest.mark.parametrize("seed", [0, 4, 5])
def test_streaming_agrees_with_exact(seed):
    scores, masks = random_case(seed, n=8)
    exact = pixel_metrics(scores, masks)
    acc = PixelMetricAccumulator(bins=20_000, score_range=(0.0, 1.4))
    for i in range(0, len(scores), 3):  # batches of maps
        acc.update(scores[i : i + 3], masks[i : i + 3])
    streamed = acc.compute()
    for key in ("auroc", "ap", "aupro", "f1_max", "f1_threshold"):
        assert streamed[key] == pytest.approx(exact[key], abs=1e-3), key


def test_perfect_and_inverted_scores():
    masks = np.zeros((2, 20, 20), np.uint8)
    masks[0, 5:10, 5:10] = 2
    perfect = pixel_metrics(masks.astype(float), masks)
    assert perfect == pytest.approx(
        {"auroc": 1.0, "ap": 1.0, "aupro": 1.0, "f1_max": 1.0, "f1_threshold": 2.0}
    )
    inverted = pixel_metrics(-masks.astype(float), masks)
    assert inverted["auroc"] == 0.0 and inverted["aupro"] == 0.0


def test_regions_count_equally_whatever_their_size():
    masks = np.zeros((1, 30, 30), np.uint8)
    masks[0, 0:10, 0:10] = 1  # 100 px, found
    masks[0, 20:22, 20:22] = 1  # 4 px, missed
    scores = np.zeros(masks.shape)
    scores[0, 0:10, 0:10] = 1.0
    # At threshold 1 PRO is 0.5 at FPR 0: one of two regions found, whatever their sizes.
    # At threshold 0 everything is predicted (FPR 1, PRO 1); the trapezoid interpolates
    # that step to PRO 0.65 at FPR 0.3, so AUPRO = (0.5 + 0.65) / 2 = 0.575.
    assert pixel_metrics(scores, masks)["aupro"] == pytest.approx(0.575, abs=1e-6)
    # weighting by pixels instead would give 100/104 at FPR 0
    masks[0, 20:22, 20:22] = 0
    assert pixel_metrics(scores, masks)["aupro"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(
    ("scores", "masks", "message"),
    [
        (np.zeros((2, 4, 4)), np.zeros((2, 4, 4)), "both anomalous and normal"),
        (np.zeros((2, 4, 4)), np.ones((2, 4, 4)), "both anomalous and normal"),
        (np.zeros((2, 4, 4)), np.zeros((2, 4, 5)), "must all be"),
        (np.full((1, 2, 2), np.nan), np.eye(2)[None], "NaN"),
    ],
)
def test_bad_inputs_raise(scores, masks, message):
    with pytest.raises(ValueError, match=message):
        pixel_metrics(scores, masks)


def test_accumulator_refuses_bad_settings():
    with pytest.raises(ValueError, match="high > low"):
        PixelMetricAccumulator(score_range=(1.0, 1.0))
    with pytest.raises(ValueError, match="bins"):
        PixelMetricAccumulator(bins=1)


def test_pixels_outside_valid_are_left_out():
    scores, masks = random_case(6)
    valid = np.ones(masks.shape, bool)
    valid[:, :, -10:] = False
    garbage = scores.copy()
    garbage[~valid] = np.where(masks[~valid] > 0, -5.0, 5.0)  # would ruin every metric
    inside = pixel_metrics(scores[:, :, :-10], masks[:, :, :-10])
    assert pixel_metrics(garbage, masks * valid, valid=valid) == pytest.approx(inside)
    acc = PixelMetricAccumulator(bins=20_000, score_range=(0.0, 1.4))
    acc.update(np.clip(garbage, 0, 1.4), masks * valid, valid=valid)
    streamed = acc.compute()
    assert streamed["auroc"] == pytest.approx(inside["auroc"], abs=1e-3)
    assert streamed["ap"] == pytest.approx(inside["ap"], abs=1e-3)
    curves = acc.curves()
    assert curves["fpr"][0] == 0 and curves["tpr"][-1] == pytest.approx(1.0)
