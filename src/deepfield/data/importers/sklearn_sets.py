"""scikit-learn's bundled data sets: iris, wine, breast_cancer as tables, digits as images."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from deepfield.data.importers._common import _Plan, _array_rows
from deepfield.errors import InputError

SKLEARN_SETS = ("iris", "digits", "wine", "breast_cancer")


def _plan_sklearn(source, options: Mapping[str, Any], stack: contextlib.ExitStack) -> _Plan:
    """iris/wine/breast_cancer as (N, D) "table" stores; digits as (N, 1, 8, 8) images.

    Digits pixels are kept as scikit-learn gives them: integer counts 0-16 (not scaled).
    """
    name = os.fspath(source)
    name = name.split(":", 1)[1] if name.startswith("sklearn:") else name
    name = name.strip().lower().replace("-", "_")
    if name not in SKLEARN_SETS:
        raise InputError(f"unknown scikit-learn data set {name!r}; the bundled ones are: "
                         f"{', '.join('sklearn:' + s for s in SKLEARN_SETS)}")
    import sklearn
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")()
    target = np.asarray(bunch.target, dtype=np.int64)
    target_names = [str(t) for t in np.asarray(bunch.target_names).tolist()]
    extra = {"sklearn_dataset": name, "sklearn_version": sklearn.__version__,
             "target_names": target_names}
    if name == "digits":
        x = np.asarray(bunch.images, dtype=np.float32)[:, None]
        extra["pixel_values"] = "integer counts 0-16 as given by scikit-learn (not normalised)"
        plan = _Plan(x=_array_rows(x, "sklearn:digits"), kind="image")
        plan.catalog = {"target": target}
    else:
        x = np.asarray(bunch.data, dtype=np.float32)
        extra["feature_names"] = [str(f) for f in bunch.feature_names]
        plan = _Plan(x=_array_rows(x, f"sklearn:{name}"), kind="table")
        plan.catalog = {"target": target,
                        "target_name": np.array([target_names[t] for t in target], dtype=object)}
    plan.catalog_label = f"sklearn:{name} targets"
    plan.extra_meta = extra
    return plan
