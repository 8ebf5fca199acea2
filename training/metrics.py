"""Pixel-level anomaly segmentation metrics: AUROC, AP, AUPRO and F1-max.

Two paths compute the same quantities:

- `pixel_metrics(scores, masks)` is exact: it sorts every pixel once. It holds all
  pixels in memory, which suits tests and small evaluations.
- `PixelMetricAccumulator` streams: it keeps fixed-size histograms of the scores of
  normal pixels, anomalous pixels and each ground-truth region's coverage, so an
  evaluation over thousands of 518 x 518 maps needs a few megabytes. Its thresholds are
  the bin edges, so it agrees with the exact path up to the bin width.

Definitions (all values are fractions in [0, 1]):

- AUROC: area under the ROC curve over all pixels.
- AP: step-wise average precision, sum over thresholds of (R_n - R_{n-1}) P_n, as
  sklearn's average_precision_score.
- F1-max: the largest 2PR / (P + R) over all thresholds, and the threshold giving it
  (a pixel is anomalous when its score is >= the threshold).
- AUPRO (MVTec AD): for each threshold, PRO is the mean over all ground-truth connected
  regions (8-connectivity, per image) of the fraction of the region at or above the
  threshold; FPR is over all normal pixels. PRO is integrated over FPR from 0 to
  `max_fpr` (0.3) with the trapezoid rule and divided by `max_fpr`.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

MAX_FPR = 0.3


@dataclass(frozen=True, slots=True)
class _Curve:
    """Counts at decreasing thresholds: pixels with score >= thresholds[i]."""

    thresholds: npt.NDArray[np.float64]
    tp: npt.NDArray[np.float64]
    fp: npt.NDArray[np.float64]
    pro: npt.NDArray[np.float64]  # summed region coverage, not yet divided by regions
    positives: float
    negatives: float
    regions: int


def region_weights(masks: npt.NDArray[np.bool_]) -> tuple[npt.NDArray[np.float64], int]:
    """Per pixel 1 / (size of its ground-truth region), 0 outside regions; and the region count.

    masks: (N, H, W) bool. Regions are 8-connected and never span two images.
    """
    weights = np.zeros(masks.shape, dtype=np.float64)
    regions = 0
    for i, m in enumerate(masks):
        if not m.any():
            continue
        n, labels = cv2.connectedComponents(m.astype(np.uint8), connectivity=8)
        sizes = np.bincount(labels.ravel(), minlength=n).astype(np.float64)
        inv = np.zeros(n, dtype=np.float64)
        inv[1:] = 1.0 / sizes[1:]
        weights[i] = inv[labels]
        regions += n - 1
    return weights, regions


def _as_arrays(
    scores: npt.ArrayLike, masks: npt.ArrayLike, valid: npt.ArrayLike | None
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    s = np.asarray(scores, dtype=np.float64)
    m = np.asarray(masks) != 0
    v = np.ones(m.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    if s.ndim == 2:
        s, m, v = s[None], m[None], v[None]
    if s.ndim != 3 or s.shape != m.shape or v.shape != m.shape:
        raise ValueError(
            f"scores {s.shape}, masks {m.shape} and valid {v.shape} must all be (N, H, W)"
        )
    if not np.isfinite(s[v]).all():
        raise ValueError("scores hold NaN or infinite values")
    return s, m & v, v


def _metrics(curve: _Curve, max_fpr: float) -> dict[str, float]:
    if curve.positives == 0 or curve.negatives == 0:
        raise ValueError("metrics need both anomalous and normal pixels")
    tpr = np.r_[0.0, curve.tp / curve.positives]
    fpr = np.r_[0.0, curve.fp / curve.negatives]
    auroc = float(np.trapezoid(tpr, fpr))

    predicted = curve.tp + curve.fp
    precision = np.divide(curve.tp, predicted, out=np.zeros_like(curve.tp), where=predicted > 0)
    recall = curve.tp / curve.positives
    ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    best = int(np.argmax(f1))

    pro = np.r_[0.0, curve.pro / max(curve.regions, 1)]
    aupro = _area_to(fpr, pro, max_fpr) / max_fpr
    return {
        "auroc": auroc,
        "ap": ap,
        "aupro": aupro,
        "f1_max": float(f1[best]),
        "f1_threshold": float(curve.thresholds[best]),
    }


def _area_to(x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], x_max: float) -> float:
    """Trapezoid area under y(x) for x in [0, x_max]; x is non-decreasing from 0."""
    inside = x <= x_max
    xs, ys = x[inside], y[inside]
    if xs[-1] < x_max and inside.sum() < len(x):
        j = int(np.argmax(~inside))  # first point past x_max
        x0, x1, y0, y1 = x[j - 1], x[j], y[j - 1], y[j]
        y_at = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0) if x1 > x0 else y1
        xs, ys = np.r_[xs, x_max], np.r_[ys, y_at]
    return float(np.trapezoid(ys, xs))


def pixel_metrics(
    scores: npt.ArrayLike,
    masks: npt.ArrayLike,
    max_fpr: float = MAX_FPR,
    valid: npt.ArrayLike | None = None,
) -> dict[str, float]:
    """Exact pixel metrics of anomaly `scores` against ground-truth `masks`.

    scores: float array (N, H, W) or (H, W), higher = more anomalous.
    masks: integer or bool array of the same shape; non-zero = anomalous.
    valid: optional bool array of the same shape; pixels where it is False (tile
    padding) are left out.
    Returns auroc, ap, aupro, f1_max and f1_threshold. Raises ValueError when the
    masks hold no anomalous or no normal pixel, or the shapes differ.
    """
    s, m, v = _as_arrays(scores, masks, valid)
    weights, regions = region_weights(m)
    keep = v.ravel()
    flat_s, flat_m, flat_w = s.ravel()[keep], m.ravel()[keep], weights.ravel()[keep]
    order = np.argsort(-flat_s, kind="mergesort")
    s_sorted = flat_s[order]
    last = np.r_[np.nonzero(np.diff(s_sorted))[0], s_sorted.size - 1]  # end of each tie run
    tp = np.cumsum(flat_m[order], dtype=np.float64)[last]
    fp = (last + 1).astype(np.float64) - tp
    pro = np.cumsum(flat_w[order])[last]
    curve = _Curve(
        s_sorted[last], tp, fp, pro, float(flat_m.sum()), float((~flat_m).sum()), regions
    )
    return _metrics(curve, max_fpr)


class PixelMetricAccumulator:
    """Streaming pixel metrics over batches of score maps with a known score range.

    Scores are clipped to `score_range` and binned into `bins` equal bins; thresholds
    are the bins' lower edges. Memory is O(bins), whatever the number of maps.
    """

    def __init__(self, bins: int = 20_000, score_range: tuple[float, float] = (0.0, 1.0)) -> None:
        lo, hi = score_range
        if not hi > lo:
            raise ValueError(f"score_range must be (low, high) with high > low, got {score_range}")
        if bins < 2:
            raise ValueError(f"bins must be at least 2, got {bins}")
        self.bins = bins
        self.lo, self.hi = float(lo), float(hi)
        self._pos = np.zeros(bins, dtype=np.float64)
        self._neg = np.zeros(bins, dtype=np.float64)
        self._pro = np.zeros(bins, dtype=np.float64)
        self._regions = 0

    def _bin(self, s: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        scaled = (s - self.lo) / (self.hi - self.lo) * self.bins
        return np.clip(np.floor(scaled), 0, self.bins - 1).astype(np.int64)

    def update(
        self, scores: npt.ArrayLike, masks: npt.ArrayLike, valid: npt.ArrayLike | None = None
    ) -> None:
        """Add a batch: scores (N, H, W) or (H, W) floats, masks (and valid) of the same shape."""
        s, m, v = _as_arrays(scores, masks, valid)
        b = self._bin(s).ravel()
        flat_m, flat_v = m.ravel(), v.ravel()
        self._pos += np.bincount(b[flat_m], minlength=self.bins)
        self._neg += np.bincount(b[flat_v & ~flat_m], minlength=self.bins)
        weights, regions = region_weights(m)
        flat_w = weights.ravel()
        self._pro += np.bincount(b[flat_m], weights=flat_w[flat_m], minlength=self.bins)
        self._regions += regions

    def _curve(self) -> _Curve:
        edges = self.lo + (self.hi - self.lo) * np.arange(self.bins, dtype=np.float64) / self.bins
        # from the highest threshold down: counts of pixels with score >= edge
        keep = (self._pos + self._neg)[::-1] > 0
        tp = np.cumsum(self._pos[::-1])[keep]
        fp = np.cumsum(self._neg[::-1])[keep]
        pro = np.cumsum(self._pro[::-1])[keep]
        return _Curve(
            edges[::-1][keep],
            tp,
            fp,
            pro,
            float(self._pos.sum()),
            float(self._neg.sum()),
            self._regions,
        )

    def compute(self, max_fpr: float = MAX_FPR) -> dict[str, float]:
        """Metrics of everything added so far (see pixel_metrics)."""
        return _metrics(self._curve(), max_fpr)

    def curves(self) -> dict[str, npt.NDArray[np.float64]]:
        """ROC (fpr, tpr) and precision-recall (recall, precision) points, for plotting."""
        c = self._curve()
        return {
            "fpr": np.r_[0.0, c.fp / max(c.negatives, 1.0)],
            "tpr": np.r_[0.0, c.tp / max(c.positives, 1.0)],
            "recall": c.tp / max(c.positives, 1.0),
            "precision": c.tp / np.maximum(c.tp + c.fp, 1.0),
        }
