"""Lint of a classification dataset: labels, class coverage of each split, class balance.

Fatal (the dataset cannot train a classifier as it is): a row without a label, fewer than two
classes, a class with no training example, a valid/test label never seen in train, a label that
is not one of report.json's classes. Warnings: a split whose classes are unbalanced, a held-out
split missing some classes.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from lorakit.data.classify_labels import sort_classes
from lorakit.data.splits import SPLITS

# Warn above this ratio of largest to smallest class in a split. At 3:1, always answering the
# largest class of a two-class split is already right 75% of the time, so plain accuracy on it
# says little, and an unweighted loss leans that way: past it, balance train or weight the loss.
BALANCE_RATIO = 3.0


def is_classify(splits: dict[str, list[dict]], report: dict | None = None) -> bool:
    """Whether a dataset is a classification one (its report or any row says task "classify")."""
    if isinstance(report, dict) and report.get("task") == "classify":
        return True
    return any(row.get("task") == "classify" for rows in splits.values() for row in rows)


def _label(row: dict) -> str | None:
    value = row.get("label")
    return value if isinstance(value, str) and value.strip() else None


def _derived_classes(labels: set[str]) -> list[str]:
    numeric = all(x.lstrip("-").isdigit() and str(int(x)) == x for x in labels)
    return sort_classes(labels, "int" if numeric and labels else "str")


def _coverage(counts: dict[str, Counter], classes: list[str], declared: bool) -> list[str]:
    fatal = []
    known = set(classes)
    for name in SPLITS:
        extra = sorted(set(counts[name]) - known)
        if declared and extra:
            fatal.append(f"{name}: label '{extra[0]}' is not one of report.json's {len(classes)} classes "
                         "(re-run `lorakit data prepare`)")
    if len(classes) < 2:
        fatal.append(f"only {len(classes)} class(es) ({', '.join(classes) or 'none'}): a classifier needs two or more")
    for cls in classes:
        if counts["train"][cls]:
            continue
        held = [name for name in ("test", "valid") if counts[name][cls]]
        if held:
            fatal.append(f"{held[0]}: label '{cls}' ({counts[held[0]][cls]} sample(s)) never appears in train; "
                         "a classifier cannot learn a class it never saw: move some of its samples to train")
        else:
            fatal.append(f"class '{cls}' has no training example; give it some, or leave it out of the classes")
    return fatal


def _balance(counts: dict[str, Counter], classes: list[str]) -> tuple[dict, list[str]]:
    ratios: dict[str, float | None] = {}
    warnings = []
    for name in SPLITS:
        present = {c: counts[name][c] for c in classes if counts[name][c]}
        if len(present) < 2:
            ratios[name] = None
            continue
        big, small = max(present, key=present.get), min(present, key=present.get)
        ratios[name] = round(present[big] / present[small], 3)
        if ratios[name] > BALANCE_RATIO:
            fix = ("pass --balance downsample or --balance weights" if name == "train"
                   else "read per-class scores, not plain accuracy")
            warnings.append(f"class balance: {name}'s largest class '{big}' has {ratios[name]:.1f}x the samples of "
                            f"its smallest '{small}' (over {BALANCE_RATIO:g}x); {fix}")
        missing = [c for c in classes if not counts[name][c]]
        if name != "train" and missing:
            warnings.append(f"{name} has no sample of {len(missing)} class(es) ({', '.join(missing[:5])}): "
                            "their accuracy cannot be measured there")
    return ratios, warnings


def lint_classes(splits: dict[str, list[dict]], classes: Sequence[str] | None = None) -> dict:
    """Class lint of in-memory splits; `classes` (report.json's) or else the labels found define the classes.

    Returns {"classes", "counts" (split -> class -> rows), "balance_ratio" (split -> largest/smallest
    class, None under two classes), "warnings", "fatal"}.
    """
    fatal: list[str] = []
    counts: dict[str, Counter] = {name: Counter() for name in SPLITS}
    for name in SPLITS:
        rows = splits.get(name, [])
        unlabelled = [row.get("_line", i + 1) for i, row in enumerate(rows) if _label(row) is None]
        if unlabelled:
            fatal.append(f"{name}: {len(unlabelled)} row(s) without a 'label' (a non-empty string), first at line "
                         f"{unlabelled[0]}; re-run `lorakit data prepare --task classify`")
        counts[name].update(label for label in map(_label, rows) if label is not None)
    declared = classes is not None
    names = list(classes) if declared else _derived_classes(set().union(*counts.values()))
    fatal += _coverage(counts, names, declared)
    ratios, warnings = _balance(counts, names)
    return {"classes": names, "counts": {name: {c: counts[name][c] for c in names} for name in SPLITS},
            "balance_ratio": ratios, "warnings": warnings, "fatal": fatal}


def merge_class_lint(report: dict, splits: dict[str, list[dict]], classes: object = None) -> dict:
    """Add `lint_classes` to a lint report: its "classify" entry, warnings and fatal problems; returns it."""
    declared = classes if isinstance(classes, list) and all(isinstance(c, str) for c in classes) else None
    result = lint_classes(splits, declared)
    report["classify"] = {k: v for k, v in result.items() if k not in ("warnings", "fatal")}
    # the generic lint's author-share warning is about what a language model learns; a classifier's
    # balance is that of its classes, which the class lint reports
    generic = [w for w in report.get("warnings", []) if not w.startswith("imbalance:")]
    report["warnings"] = generic + result["warnings"]
    report["fatal"] = report.get("fatal", []) + result["fatal"]
    report["ok"] = not report["fatal"]
    return report
