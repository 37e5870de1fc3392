"""Classification scores from (true class, predicted class) pairs: accuracy, macro-F1, per class.

Macro-F1 averages the per-class F1 over the classes that occur among the true or the predicted
labels (scikit-learn's default): a class absent from a small validation split and never
predicted says nothing about the model, so it does not count as an F1 of 0.
"""

from __future__ import annotations

from collections.abc import Sequence


def confusion_matrix(labels: Sequence[int], preds: Sequence[int], num_classes: int) -> list[list[int]]:
    """``m[true][predicted]``: how many examples of each class were given each class."""
    m = [[0] * num_classes for _ in range(num_classes)]
    for t, p in zip(labels, preds, strict=True):
        m[t][p] += 1
    return m


def accuracy(matrix: list[list[int]]) -> float:
    """Share of examples on the diagonal (0.0 for no examples)."""
    total = sum(map(sum, matrix))
    return sum(matrix[i][i] for i in range(len(matrix))) / total if total else 0.0


def f1_scores(matrix: list[list[int]]) -> list[float | None]:
    """Each class's F1 (2 TP / (2 TP + FP + FN)); None for a class neither true nor predicted."""
    k = len(matrix)
    scores: list[float | None] = []
    for c in range(k):
        tp = matrix[c][c]
        actual, predicted = sum(matrix[c]), sum(matrix[r][c] for r in range(k))
        scores.append(None if actual + predicted == 0 else 2 * tp / (actual + predicted))
    return scores


def macro_f1(matrix: list[list[int]]) -> float:
    """The mean F1 over the classes that occur (see the module docstring); 0.0 for no examples."""
    present = [s for s in f1_scores(matrix) if s is not None]
    return sum(present) / len(present) if present else 0.0


def per_class(matrix: list[list[int]], classes: Sequence[str]) -> list[dict]:
    """One entry per class: its examples, how many were right, accuracy on them (recall; None for
    a class with no examples) and F1."""
    rows = []
    for c, (name, f1) in enumerate(zip(classes, f1_scores(matrix), strict=True)):
        n = sum(matrix[c])
        rows.append({"class": name, "examples": n, "correct": matrix[c][c],
                     "accuracy": matrix[c][c] / n if n else None, "f1": f1})
    return rows


def scores(labels: Sequence[int], preds: Sequence[int], classes: Sequence[str]) -> dict:
    """Everything above for one set of predictions (JSON-ready)."""
    matrix = confusion_matrix(labels, preds, len(classes))
    return {"examples": len(labels), "accuracy": accuracy(matrix), "macro_f1": macro_f1(matrix),
            "per_class": per_class(matrix, classes), "classes": list(classes), "confusion_matrix": matrix}
