"""Which model output holds class scores: one rule for every place that scores a decision."""

from __future__ import annotations


def holds_class_scores(shape: tuple[int, ...]) -> bool:
    """Whether an output of this shape reads as class scores: ``(N, classes)`` or ``(N, classes, 1, 1)``
    (a 1x1 conv head), at least two classes.  A dense map, a scalar regression or a 1-D output has
    no top-1 class.  Labels (``check --inputs``), top-1 agreement and its floor in the parity tables,
    the export's own check and the freeze's agreement all read outputs by this rule."""
    return len(shape) >= 2 and shape[1] >= 2 and all(d == 1 for d in shape[2:])
