"""The loss weights that counter class imbalance.

Imbalance is one of the two causes of the one-class collapse this project exists to prevent: without
weights the loss is dominated by the majority class and the cheapest optimum predicts it everywhere.

Weights are keyed by class *index* (position in the class table, what the model's softmax and Keras'
`class_weight` use); counts are keyed by class *id* (what the data and the statistics carry).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from foundation.config import CLASS_WEIGHT_MODES


class ClassCountError(ValueError):
    """Label counts that cannot give class weights: the message names the class."""


def class_weights(
    counts: Mapping[int | str, int],
    class_ids: Sequence[int],
    mode: str,
    beta: float = 0.999,
) -> dict[int, float]:
    """Loss weight per class index, from training counts per class id (JSON string keys accepted).

    With N examples, K classes and n_k examples of class k:
      none              w_k = 1
      inverse           w_k = N / (K n_k)                 (each class carries the same total weight)
      sqrt_inverse      w_k = sqrt(N / (K n_k))           (a milder version of inverse)
      effective_number  w_k = K e_k / sum_j e_j, e_k = (1 - beta) / (1 - beta^n_k)
                        (Cui et al. 2019: weights average 1 over classes, i.e. sum to K)
    A class without training examples is an error in every mode: the model cannot learn it and the
    per-class recall gate would refuse the model anyway.
    """
    if mode not in CLASS_WEIGHT_MODES:
        raise ValueError(f"class weight mode must be one of {list(CLASS_WEIGHT_MODES)}, got {mode!r}")
    by_id = {int(class_id): int(count) for class_id, count in counts.items()}
    unknown = sorted(set(by_id) - set(class_ids))
    if unknown:
        raise ClassCountError(f"counts for class ids outside the class table {list(class_ids)}: {unknown}")
    n = [by_id.get(class_id, 0) for class_id in class_ids]
    empty = [class_id for class_id, count in zip(class_ids, n) if count <= 0]
    if empty:
        raise ClassCountError(f"no training examples of class id(s) {empty}: the model cannot learn them")
    k, total = len(n), sum(n)
    if mode == "none":
        weights = [1.0] * k
    elif mode == "inverse":
        weights = [total / (k * n_k) for n_k in n]
    elif mode == "sqrt_inverse":
        weights = [math.sqrt(total / (k * n_k)) for n_k in n]
    else:
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"effective_number beta must be in [0, 1), got {beta}")
        effective = [(1.0 - beta) / (1.0 - beta**n_k) for n_k in n]
        weights = [k * e / sum(effective) for e in effective]
    return dict(enumerate(weights))
