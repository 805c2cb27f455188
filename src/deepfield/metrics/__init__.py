"""Statistics that validate generative models of galaxy images: measure the same morphology on
held-out real galaxies and on model samples observed through the same PSFs and noise, then
compare the two distributions; and what latent codes carry: :func:`linear_probe`, the
cross-validated R^2 of a ridge regression from codes to a catalog quantity.

Units, stated once:

- images: (N, H, W) or (N, 1, H, W), one band, counts (any linear flux unit);
- positions, sizes and radii: pixels, 0-indexed array coordinates (x = column, y = row), with
  ``*_arcsec`` twins when a ``pixel_scale`` (arcsec/pixel) is given;
- ``noise_sigma``: white-noise standard deviation, counts/pixel;
- Gini, M20, concentration, asymmetry, ellipticities, rho4: dimensionless;
- failed measurements: NaN, counted, never raised.

Comparison conventions: means with bootstrap sigmas; W1 in the statistic's unit;
standardised W1 = W1 / (IQR / 1.349 of the real sample).

>>> import numpy as np
>>> from deepfield.metrics import morphology, compare_samples, format_table
>>> real = morphology(real_images, noise_sigma=real_sigma, pixel_scale=0.2)  # doctest: +SKIP
>>> model = morphology(model_images, noise_sigma=real_sigma, pixel_scale=0.2)  # doctest: +SKIP
>>> print(format_table(compare_samples(real, model)))  # doctest: +SKIP
"""

from deepfield.metrics.frechet import encoder_features, encoder_frechet_distance, frechet_distance
from deepfield.metrics.morphology import (
    MORPHOLOGY_STATISTICS,
    asymmetry,
    concentration,
    gini,
    gini_segmap,
    half_light_radius,
    hsm_moments,
    m20,
    morphology,
    petrosian_radius,
)
from deepfield.metrics.probes import ProbeResult, linear_probe
from deepfield.metrics.stats import (
    SpearmanResult,
    bootstrap_mean,
    compare_samples,
    format_table,
    robust_sigma,
    spearman,
    standardised_w1,
    wasserstein1,
)

__all__ = [
    "frechet_distance", "encoder_frechet_distance", "encoder_features",
    "MORPHOLOGY_STATISTICS",
    "hsm_moments",
    "gini",
    "m20",
    "concentration",
    "asymmetry",
    "gini_segmap",
    "half_light_radius",
    "petrosian_radius",
    "morphology",
    "bootstrap_mean",
    "robust_sigma",
    "wasserstein1",
    "standardised_w1",
    "spearman",
    "SpearmanResult",
    "compare_samples",
    "format_table",
    "linear_probe",
    "ProbeResult",
]
