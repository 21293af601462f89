"""A fast development metric for front-ends: how often the smoothed classifier's vote share clears the
level that a radius needs.  Not a certificate; a way to compare recipes on hundreds of photos in minutes.

For each image x, m seeded noise draws give the vote share p_hat(y) = #{f(x + noise) = y} / m, an estimate
of p(y) = P(f(x + noise) = y), for y the image's label ("accuracy") and for the undefended classifier's own
prediction on the clean image ("agreement").  Cohen et al.'s certificate holds radius r when the lower
confidence bound p_A of the top class satisfies p_A > 1/2 and sigma Phi^{-1}(p_A) / Delta >= r (Gaussian;
Laplace: -b ln(2 (1 - p_A)) / Delta >= r), i.e. p_A >= level(r) = Phi(r Delta / sigma).  Here an image
counts at r when p_hat(y) > 1/2 and p_hat(y) >= level(r): the plug-in version, ``n = None``.  With ``n``
given, the level is raised to what a full certification at n estimation draws and level alpha would need
if the estimate were exact: the smallest k / n whose one-sided Clopper-Pearson lower bound reaches level(r).

The share of images that count is reported with a Wilson score interval over the images (the images, not
the draws, are the main source of spread: 25 photos leave +-18 points).  The mean plug-in radius (p_hat
clipped to (m - 1/2) / m so that it stays finite) is a smoother figure for ranking, with its standard error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from .certificates import NOISE_KINDS, smoothing_radius_gaussian, smoothing_radius_laplace
from .stats import clopper_pearson_lower

__all__ = ["radius_level", "certification_level", "wilson_interval", "ScreenSummary", "summarize_shares",
           "plugin_radius", "paired_difference", "measure_vote_shares"]


def radius_level(radius: float, noise: str, scale: float, sensitivity: float = 1.0) -> float:
    """The smallest p_A whose smoothing radius is >= ``radius`` (1/2 at radius 0)."""
    if noise not in NOISE_KINDS:
        raise ValueError(f"noise must be one of {NOISE_KINDS}, got {noise!r}")
    if not (radius >= 0 and scale > 0 and sensitivity > 0):
        raise ValueError(f"need radius >= 0, scale > 0 and sensitivity > 0; got {radius}, {scale}, {sensitivity}")
    if noise == "gaussian":
        return float(norm.cdf(radius * sensitivity / scale))
    return float(1 - 0.5 * math.exp(-radius * sensitivity / scale))


def certification_level(level: float, n: int, alpha: float) -> float:
    """The smallest vote share k / n whose Clopper-Pearson lower bound at ``alpha`` is >= ``level``
    (> 1/2 for level 1/2, where the certificate abstains at equality); 1.0 + 1/n when none is."""
    k = np.arange(n + 1)
    lower = np.asarray(clopper_pearson_lower(k, np.full_like(k, n), alpha), dtype=float)
    ok = lower > level if level <= 0.5 else lower >= level
    return float(k[ok][0] / n) if ok.any() else 1.0 + 1.0 / n


def wilson_interval(k: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k / total."""
    if total <= 0:
        return (0.0, 1.0)
    z = float(norm.ppf(0.5 + confidence / 2))
    p = k / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (max(0.0, centre - half), min(1.0, centre + half))


def plugin_radius(share: np.ndarray, draws: int, noise: str, scale: float, sensitivity: float = 1.0) -> np.ndarray:
    """The smoothing radius of p_hat itself where p_hat > 1/2, else 0; p_hat is clipped to (draws - 1/2) / draws
    so that a unanimous vote gives a finite radius."""
    p = np.minimum(np.asarray(share, dtype=float), (draws - 0.5) / draws)
    radius = (smoothing_radius_gaussian if noise == "gaussian" else smoothing_radius_laplace)(p, scale, sensitivity)
    return np.maximum(np.asarray(radius, dtype=float), 0.0)


@dataclass(frozen=True)
class ScreenSummary:
    images: int
    draws: int
    radii: tuple
    levels: tuple  # the vote share an image needs at each radius
    counts: tuple  # images whose share clears it
    shares: tuple  # counts / images
    intervals: tuple  # Wilson 95% per radius
    mean_radius: float  # mean plug-in radius (0 for a wrong or abstained image)
    mean_radius_se: float

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


def summarize_shares(shares, draws: int, radii, noise: str, scale: float, sensitivity: float = 1.0,
                     n: int | None = None, alpha: float = 0.001) -> ScreenSummary:
    """Per radius, how many of the images' vote shares (of the label, or of the undefended prediction) clear
    the level that radius needs; see the module docstring.  ``shares``: one value in [0, 1] per image."""
    shares = np.asarray(shares, dtype=float)
    if shares.ndim != 1 or not len(shares) or ((shares < 0) | (shares > 1)).any():
        raise ValueError("shares must be a non-empty 1-D array of values in [0, 1]")
    levels = []
    for r in radii:
        level = radius_level(r, noise, scale, sensitivity)
        levels.append(certification_level(level, n, alpha) if n is not None else level)
    counts = tuple(int(((shares > 0.5) & (shares >= lv)).sum()) for lv in levels)
    radius = plugin_radius(shares, draws, noise, scale, sensitivity)
    se = float(radius.std(ddof=1) / math.sqrt(len(radius))) if len(radius) > 1 else float("nan")
    return ScreenSummary(images=len(shares), draws=draws, radii=tuple(float(r) for r in radii),
                         levels=tuple(levels), counts=counts, shares=tuple(c / len(shares) for c in counts),
                         intervals=tuple(wilson_interval(c, len(shares)) for c in counts),
                         mean_radius=float(radius.mean()), mean_radius_se=se)


def paired_difference(shares, reference, draws: int, radius: float, noise: str, scale: float,
                      sensitivity: float = 1.0) -> dict:
    """Front-end A against a reference B on the same images and the same noise seeds: the mean difference of the
    plug-in radii with its paired standard error (far smaller than either one's own spread), and at ``radius``
    the images A clears and B does not ("gained") and the reverse ("lost")."""
    a, b = np.asarray(shares, dtype=float), np.asarray(reference, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError("shares and reference must be 1-D arrays of the same images")
    diff = plugin_radius(a, draws, noise, scale, sensitivity) - plugin_radius(b, draws, noise, scale, sensitivity)
    level = radius_level(radius, noise, scale, sensitivity)
    clears_a, clears_b = (a > 0.5) & (a >= level), (b > 0.5) & (b >= level)
    return {"mean_radius_difference": float(diff.mean()),
            "se": float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else float("nan"),
            "radius": float(radius), "gained": int((clears_a & ~clears_b).sum()),
            "lost": int((clears_b & ~clears_a).sum())}


def measure_vote_shares(model, classifier, images, labels, draws: int, seed: int, batch_size: int = 64,
                        autocast_dtype=None, first_index: int = 0, indices=None) -> list[dict]:
    """Votes of ``draws`` seeded noise draws of ``model`` (a stack with ``pre_noise``/``sample_noise``/
    ``logits_from_noisy``) for each image of the batch ``images`` (B, C, H, W), and the undefended
    ``classifier``'s prediction on the clean image.  Image i's noise is seeded by (seed, first_index + i), so
    a photo gets the same noise in any batch and in any front-end of the same noise shape."""
    import torch

    from .sampler import sample_votes

    with torch.inference_mode():
        undefended = classifier(images).argmax(1).tolist()
        z = model.pre_noise(images)
    num_classes = len(classifier.class_names) if getattr(classifier, "class_names", None) else None
    if num_classes is None:
        with torch.inference_mode():
            num_classes = classifier(images[:1]).shape[1]
    ids = list(indices) if indices is not None else list(range(first_index, first_index + len(images)))
    if len(ids) != len(images):
        raise ValueError(f"{len(ids)} indices for {len(images)} images")
    counts = sample_votes(model, z, ids, draws, num_classes, tuple(images.shape[-2:]), seed, "screening",
                          batch_size=batch_size, autocast_dtype=autocast_dtype).counts.cpu().numpy()
    rows = []
    for j, idx in enumerate(ids):
        c, y, u = counts[j], int(labels[j]), undefended[j]
        top = int(c.argmax())
        rows.append({"idx": idx, "label": y, "undefended": u, "top": top, "draws": draws,
                     "share_top": float(c[top] / draws), "share_undefended": float(c[u] / draws),
                     "share_label": float(c[y] / draws) if y >= 0 else None})
    return rows
