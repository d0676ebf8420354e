"""The classifier on top of the embedding: targets, candidates, selection on validation data.

Target (default `joint`): one calibrated 4-class model of the joint outcome
(both pass / only cheap / only strong / neither). `p_cheap_ok` = 1 - P(only strong) — the
cheap model loses nothing unless it fails where the strong one passes — and P(cheap passes) =
P(both) + P(only cheap) come from the same calibrated model. `cheap_ok` fits the binary
"cheap loses nothing" label directly. benchmarks/routing_quality.py measures both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

JOINT_CLASSES = ("both", "cheap_only", "strong_only", "neither")
JOINT_CHEAP_OK = ("both", "cheap_only", "neither")
BINARY_CLASSES = ("cheap_ok", "strong_needed")
BINARY_CHEAP_OK = ("cheap_ok",)
TARGETS = ("joint", "cheap_ok")
# Tried by default (validation APGR picks); logreg_c1 stays available by name but is slow on the
# joint target and never won on the public data.
DEFAULT_HEADS = ("logreg_c0.03", "logreg_c0.1", "logreg_c0.3", "mlp_64")


@dataclass(frozen=True)
class Target:
    name: str
    classes: tuple[str, ...]
    cheap_ok_classes: tuple[str, ...]

    def labels(self, cheap_passed: np.ndarray, strong_passed: np.ndarray) -> np.ndarray:
        """Integer class index per row (index into `classes`)."""
        c = np.asarray(cheap_passed, dtype=bool)
        s = np.asarray(strong_passed, dtype=bool)
        if self.name == "joint":
            return np.where(c & s, 0, np.where(c, 1, np.where(s, 2, 3)))
        return np.where(~c & s, 1, 0)

    @property
    def cheap_ok_index(self) -> list[int]:
        return [self.classes.index(c) for c in self.cheap_ok_classes]


def make_target(name: str) -> Target:
    if name == "joint":
        return Target("joint", JOINT_CLASSES, JOINT_CHEAP_OK)
    if name == "cheap_ok":
        return Target("cheap_ok", BINARY_CLASSES, BINARY_CHEAP_OK)
    raise ValueError(f"unknown target {name!r}; expected one of {TARGETS}")


def calibration_folds(n_splits: int, seed: int):
    """Shuffled stratified folds for CalibratedClassifierCV.

    sklearn's default (an int cv) does not shuffle; a log sorted by topic then trains each
    calibration member without whole topics, which cost 0.01-0.09 APGR on routellm-mmlu.
    """
    from sklearn.model_selection import StratifiedKFold

    return StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)


def _calibrated(base, method: str, cv: int, seed: int):
    from sklearn.calibration import CalibratedClassifierCV

    return CalibratedClassifierCV(base, method=method, cv=calibration_folds(cv, seed))


def candidate_heads(seed: int = 0, calibration: str = "sigmoid", cv: int = 5) -> dict[str, Callable[[], object]]:
    """Factories of the candidate classifiers; each is calibrated and converts to ONNX."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    def lr(c: float):
        return lambda: _calibrated(LogisticRegression(C=c, max_iter=2000), calibration, cv, seed)

    return {
        "logreg_c0.03": lr(0.03),
        "logreg_c0.1": lr(0.1),
        "logreg_c0.3": lr(0.3),
        "logreg_c1": lr(1.0),
        "mlp_64": lambda: _calibrated(
            MLPClassifier(
                hidden_layer_sizes=(64,),
                alpha=1e-2,
                early_stopping=True,
                validation_fraction=0.15,
                max_iter=200,
                random_state=seed,
            ),
            calibration,
            cv,
            seed,
        ),
    }


def p_cheap_ok(model, X: np.ndarray, target: Target) -> np.ndarray:
    """The calibrated probability that the cheap model loses nothing, from any fitted head."""
    proba = model.predict_proba(X)
    cols = [list(model.classes_).index(i) for i in target.cheap_ok_index if i in model.classes_]
    return np.clip(proba[:, cols].sum(axis=1), 0.0, 1.0)
