"""Gate a registered candidate against the version holding an alias, on a frozen evaluation log.

Both versions are scored on the same labelled log (`router_model.offline.savings.score_log`, the
same scoring as `router-cost savings`). The log is frozen: its sha256 is recorded on the
registered model at the first promotion, and a later promotion compares only on a file with that
sha256. A log with prompts either model was trained or validated on (its Bloom filter of
normalised prompts, `DataRecord.trained_prompts`) is refused: it would flatter that model. Both
versions must route the eval log's model pair (a candidate trained on another pair is a usage
error, exit 2), and are priced as every command prices (`--prices`, `--price-as`, over the mapping
each artifact records).

The candidate takes the alias only if the paired bootstrap 90% interval of its APGR minus the
champion's has a lower bound >= -tolerance, and the goal it was trained for (its quality floor,
or its strong-share or cost cap) holds on the log at its own threshold, within the tolerance.
The previous holder keeps the `previous` alias, which `rollback` moves the alias back to. Every
comparison is an MLflow run (experiment `router-promotion`) with the table as an artifact.

The refusals that need no scores (a changed eval log, an overlap with either version's training
prompts) are decided before either version is scored, after every usage error the scoring would
raise for the log (`read_eval_log`, `check_bootstrap`); such a run logs no score metrics. A
version's scores on the frozen log are cached in the promote cache directory
(training/promote_cache.py), so gating another candidate against the same champion does not score
the champion again.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from router_model.artifact import read_metadata, sha256_file
from router_model.errors import ConfigError
from router_model.offline.log import LogFormatError
from router_model.registry import MlflowRegistry, RegistryVersion, fetch_version, tracking_uri
from training.promote_cache import ScoreCache
from training.promote_scoring import (
    INTERVAL,
    ModelScore,
    PromotionUsageError,
    check_bootstrap,
    paired_bootstrap_apgr,
    read_eval_log,
    score_model,
)

__all__ = [
    "EXIT_PROMOTED",
    "EXIT_REFUSED",
    "EXIT_USAGE",
    "ModelScore",
    "PromoteConfig",
    "PromotionResult",
    "PromotionUsageError",
    "format_table",
    "paired_bootstrap_apgr",
    "previous_alias",
    "promote",
    "rollback",
    "score_model",
]

EXIT_PROMOTED, EXIT_REFUSED, EXIT_USAGE = 0, 3, 2
EVAL_SHA_TAG = "router.eval_log_sha256"
EVAL_NAME_TAG = "router.eval_log"
PROMOTION_EXPERIMENT = "router-promotion"


@dataclass(frozen=True)
class PromoteConfig:
    """What `router-promote` was asked to do."""

    eval_log: Path | None = None
    candidate: str = "latest"
    alias: str = "champion"
    tolerance: float = 0.01
    force: bool = False
    registered_model: str = "router-model"
    tracking_uri: str | None = None
    experiment: str = PROMOTION_EXPERIMENT
    bootstrap: int = 2000
    seed: int = 0
    cache_dir: Path | None = None  # where versions are downloaded (default: the registry cache)
    prices: Path | None = None  # a price table overriding/extending the packaged one (--prices)
    price_as: tuple[tuple[str, str], ...] = ()  # (unpriced name, priced model), over each artifact's own mapping

    def __post_init__(self) -> None:
        if not (isinstance(self.tolerance, (int, float)) and math.isfinite(self.tolerance) and 0 <= self.tolerance < 1):
            raise ConfigError(f"tolerance must be in [0, 1), got {self.tolerance!r}")
        if self.bootstrap < 100:
            raise ConfigError(f"bootstrap must be at least 100 resamples, got {self.bootstrap}")
        if self.candidate != "latest" and not self.candidate.isdigit():
            raise ConfigError(f"candidate must be a version number or 'latest', got {self.candidate!r}")
        if not self.alias or "@" in self.alias or "/" in self.alias:
            raise ConfigError(f"alias must be a plain name, got {self.alias!r}")

    @property
    def uri(self) -> str:
        return tracking_uri(self.tracking_uri)


@dataclass
class PromotionResult:
    """The decision, its reasons and the figures behind it."""

    promoted: bool
    action: str  # "promote" or "rollback"
    reasons: list[str]
    candidate: ModelScore | None = None
    champion: ModelScore | None = None
    apgr_diff: float | None = None
    interval: tuple[float, float] | None = None
    alias_moves: list[str] = field(default_factory=list)
    eval_log_sha256: str = ""
    run_id: str | None = None
    table: str = ""

    @property
    def exit_code(self) -> int:
        return EXIT_PROMOTED if self.promoted else EXIT_REFUSED

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["exit_code"] = self.exit_code
        return d


def previous_alias(alias: str) -> str:
    """Where the old holder of `alias` is kept: `previous` for champion, else `<alias>-previous`."""
    return "previous" if alias == "champion" else f"{alias}-previous"


# ------------------------------------------------------------------------------ scoring


_ROWS = (
    ("APGR", "apgr", "{:.4f}"),
    ("CPT(50%)", "cpt50", "{:.3f}"),
    ("CPT(80%)", "cpt80", "{:.3f}"),
    ("ECE (p_cheap_ok)", "ece", "{:.4f}"),
    ("threshold", "threshold", "{:.4f}"),
    ("quality vs strong @thr", "quality_vs_strong", "{:.4f}"),
    ("pass rate @thr", "quality", "{:.4f}"),
    ("strong share @thr", "strong_share", "{:.3f}"),
    ("cost saved @thr", "cost_saved", "{:.1%}"),
    ("goal", "goal", "{}"),
    ("goal holds", "goal_holds", "{}"),
    ("rows seen in training", "rows_seen_in_training", "{}"),
)


def format_table(result: PromotionResult, eval_log: Path | None, n_rows: int | None = None) -> str:
    """The comparison as text: one column per model, then the interval and the decision."""
    cols = [(f"champion v{m.version}", m) for m in [result.champion] if m is not None]
    cols += [(f"candidate v{m.version}", m) for m in [result.candidate] if m is not None]
    lines = []
    if eval_log is not None:
        rows = f", {n_rows} rows" if n_rows is not None else ""
        lines.append(f"eval log {eval_log} (sha256 {result.eval_log_sha256[:16]}...{rows})")
        if result.action == "promote" and not cols:
            lines.append("not scored: refused for what the eval log is, before either version was scored")
    if cols:
        width = max(len(label) for label, _, _ in _ROWS) + 2
        cells = {key: [fmt.format(getattr(m, key)) for _, m in cols] for _, key, fmt in _ROWS}
        # Each column as wide as its widest cell, and always two spaces from its neighbour.
        col = max(18, *(len(label) + 2 for label, _ in cols), *(len(c) + 2 for row in cells.values() for c in row))
        lines.append(" " * width + "".join(f"{label:>{col}}" for label, _ in cols))
        for label, key, _ in _ROWS:
            lines.append(f"{label:<{width}}" + "".join(f"{c:>{col}}" for c in cells[key]))
    if result.interval is not None and result.apgr_diff is not None:
        lo, hi = result.interval
        lines.append(f"APGR candidate - champion: {result.apgr_diff:+.4f}, paired bootstrap {INTERVAL:.0%} interval "
                     f"[{lo:+.4f}, {hi:+.4f}]")
    verdict = "ROLLED BACK" if result.action == "rollback" else "PROMOTED" if result.promoted else "REFUSED"
    lines.append(f"{verdict}" + (": " + "; ".join(result.alias_moves) if result.alias_moves else ""))
    lines.extend(f"  - {r}" for r in result.reasons)
    return "\n".join(lines)


# ------------------------------------------------------------------------------ the registry


def _client(config: PromoteConfig) -> MlflowRegistry:
    return MlflowRegistry(config.uri)


def _alias_version(reg: MlflowRegistry, name: str, alias: str) -> RegistryVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        mv = reg.client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    return _registry_version(mv, alias)


def _registry_version(mv: Any, alias: str | None = None) -> RegistryVersion:
    """With the version's tags: fetch_version checks the download against its `artifact_version` tag."""
    tags = tuple(sorted((str(k), str(v)) for k, v in dict(mv.tags or {}).items()))
    return RegistryVersion(mv.name, str(mv.version), mv.source or "", mv.run_id or "", alias, tags)


def _candidate_version(reg: MlflowRegistry, name: str, candidate: str) -> RegistryVersion:
    from mlflow.exceptions import MlflowException

    try:
        reg.client.get_registered_model(name)
    except MlflowException:
        raise PromotionUsageError(f"no registered model {name!r} in {reg.uri}; train one first (router-train)") from None
    if candidate == "latest":
        versions = reg.client.search_model_versions(f"name = '{name}'")
        if not versions:
            raise PromotionUsageError(f"registered model {name!r} has no versions in {reg.uri}")
        mv = max(versions, key=lambda v: int(v.version))
    else:
        try:
            mv = reg.client.get_model_version(name, candidate)
        except MlflowException:
            raise PromotionUsageError(f"{name!r} has no version {candidate} in {reg.uri}") from None
    return _registry_version(mv)


def _log_run(config: PromoteConfig, result: PromotionResult, params: dict[str, Any]) -> str | None:
    import mlflow

    mlflow.set_tracking_uri(config.uri)
    mlflow.set_experiment(config.experiment)
    with mlflow.start_run(run_name=f"{result.action} {config.registered_model}@{config.alias}") as run:
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        metrics: dict[str, float] = {"promoted": float(result.promoted)}
        for label, m in (("candidate", result.candidate), ("champion", result.champion)):
            if m is None:
                continue
            for key in ("apgr", "cpt50", "cpt80", "ece", "quality", "quality_vs_strong", "strong_share", "cost_saved"):
                value = float(getattr(m, key))
                if math.isfinite(value):
                    metrics[f"{label}.{key}"] = value
        if result.interval is not None and result.apgr_diff is not None:
            metrics.update({"apgr_diff": result.apgr_diff, "apgr_diff_low": result.interval[0], "apgr_diff_high": result.interval[1]})
        mlflow.log_metrics(metrics)
        mlflow.set_tags({"router.action": result.action, "router.decision": "promoted" if result.promoted else "refused"})
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "comparison.txt").write_text(result.table + "\n", encoding="utf-8")
            (Path(tmp) / "comparison.json").write_text(json.dumps(result.to_dict(), indent=2, default=str), encoding="utf-8")
            mlflow.log_artifacts(tmp, artifact_path="promotion")
        return str(run.info.run_id)


def _pair(model_dir: Path) -> tuple[str, str]:
    meta = read_metadata(model_dir)
    return meta.cheap_model, meta.strong_model


def promote(config: PromoteConfig) -> PromotionResult:
    """Score, gate and (maybe) move the alias; raises PromotionUsageError (or ConfigError) on bad input."""
    if config.eval_log is None:
        raise PromotionUsageError("--eval-log FILE is required to promote")
    eval_log = Path(config.eval_log)
    if not eval_log.is_file():
        raise PromotionUsageError(f"eval log not found: {eval_log}")
    reg = _client(config)
    name, alias = config.registered_model, config.alias
    cand_v = _candidate_version(reg, name, config.candidate)
    champ_v = _alias_version(reg, name, alias)
    sha = sha256_file(eval_log)
    result = PromotionResult(False, "promote", [], eval_log_sha256=sha)
    if champ_v is not None and champ_v.version == cand_v.version:
        raise PromotionUsageError(f"version {cand_v.version} already holds @{alias}; nothing to compare")

    reasons: list[str] = []
    frozen = reg.client.get_registered_model(name).tags.get(EVAL_SHA_TAG)
    if frozen and frozen != sha:
        frozen_name = reg.client.get_registered_model(name).tags.get(EVAL_NAME_TAG, "?")
        reasons.append(f"eval log changed: @{alias} was promoted on {frozen_name} (sha256 {frozen[:16]}...), this file "
                       f"has sha256 {sha[:16]}...; compare on the frozen file (or --force to re-freeze on this one)")

    cand_dir = fetch_version(reg, cand_v, config.cache_dir)
    champ_dir = fetch_version(reg, champ_v, config.cache_dir) if champ_v is not None else None
    cand_pair = _pair(cand_dir)
    if champ_dir is not None and _pair(champ_dir) != cand_pair:
        champ_pair = _pair(champ_dir)
        raise PromotionUsageError(
            f"the candidate v{cand_v.version} routes {cand_pair[0]} / {cand_pair[1]} but @{alias} "
            f"(v{champ_v.version if champ_v else '?'}) routes {champ_pair[0]} / {champ_pair[1]}: not comparable; "
            "register it under another name (--registered-model) or retrain it on the champion's pair")
    price_as = dict(config.price_as)
    cache = ScoreCache(config.cache_dir)
    try:
        # What the log is to each version, before either is scored: the refusals that need no scores
        # (and the usage errors scoring would raise for this log) come first.
        cand_view = read_eval_log(cand_dir, eval_log, cand_v.version, eval_log_sha256=sha, prices=config.prices,
                                  price_as=price_as)
        champ_view = None
        if champ_dir is not None and champ_v is not None:
            champ_view = read_eval_log(champ_dir, eval_log, champ_v.version, eval_log_sha256=sha,
                                       prices=config.prices, price_as=price_as)
    except LogFormatError as e:
        raise PromotionUsageError(f"the eval log cannot be read: {e}") from None
    n_rows = cand_view.n
    for view in (cand_view, champ_view):
        if view is not None and view.rows_seen_in_training > view.overlap_allowance:
            reasons.append(f"eval log overlaps the training data of v{view.version}: {view.rows_seen_in_training} of "
                           f"{n_rows} prompts were trained or validated on (allowance for the prompt digest's "
                           f"false positives: {view.overlap_allowance})")
    if reasons and not config.force:
        # Refused for what the eval log is: no version is scored. The bootstrap's own usage error
        # (a log too small or too uniform) still comes first, as it did when both were scored.
        if champ_view is not None:
            check_bootstrap(cand_view.cheap_passed, cand_view.strong_passed, resamples=config.bootstrap,
                            seed=config.seed)
        result.reasons = reasons
        return _finish(config, result, eval_log, cand_v, champ_v, n_rows)

    try:
        cand, cand_sc = score_model(cand_dir, eval_log, cand_v.version, tolerance=config.tolerance,
                                    prices=config.prices, price_as=price_as, view=cand_view, cache=cache)
        champ = champ_sc = None
        if champ_dir is not None and champ_v is not None:
            champ, champ_sc = score_model(champ_dir, eval_log, champ_v.version, tolerance=config.tolerance,
                                          prices=config.prices, price_as=price_as, view=champ_view, cache=cache)
    except LogFormatError as e:
        raise PromotionUsageError(f"the eval log cannot be read: {e}") from None
    result.candidate, result.champion = cand, champ

    if not cand.goal_holds:
        reasons.append(f"the candidate's goal {cand.goal} does not hold on the eval log at its threshold "
                       f"{cand.threshold:.4f} (quality vs strong {cand.quality_vs_strong:.4f}, strong share "
                       f"{cand.strong_share:.3f}; tolerance {config.tolerance:g})")
    if champ is not None and champ_sc is not None:
        diff, lo, hi = paired_bootstrap_apgr(cand_sc.p, champ_sc.p, cheap_passed=cand_sc.cheap_passed,
                                             strong_passed=cand_sc.strong_passed,
                                             resamples=config.bootstrap, seed=config.seed)
        result.apgr_diff, result.interval = diff, (lo, hi)
        if lo < -config.tolerance:
            reasons.append(f"APGR may be worse: the {INTERVAL:.0%} interval of candidate - champion has lower bound "
                           f"{lo:+.4f} < -{config.tolerance:g}")

    if reasons and not config.force:
        result.reasons = reasons
    else:
        result.promoted = True
        result.reasons = [f"overridden by --force: {r}" for r in reasons] or (
            ["no champion yet: first candidate, its goal holds on the eval log"] if champ is None
            else [f"APGR interval lower bound {result.interval[0]:+.4f} >= -{config.tolerance:g} and the goal holds"
                  if result.interval else "the goal holds"])
        if champ_v is not None:
            prev = previous_alias(alias)
            reg.client.set_registered_model_alias(name, prev, champ_v.version)
            result.alias_moves.append(f"@{prev} -> v{champ_v.version}")
        reg.client.set_registered_model_alias(name, alias, cand_v.version)
        result.alias_moves.append(f"@{alias} -> v{cand_v.version}")
        if not frozen or frozen != sha:
            reg.client.set_registered_model_tag(name, EVAL_SHA_TAG, sha)
            reg.client.set_registered_model_tag(name, EVAL_NAME_TAG, eval_log.name)
    return _finish(config, result, eval_log, cand_v, champ_v, len(cand_sc.p))


def _finish(config: PromoteConfig, result: PromotionResult, eval_log: Path, cand_v: RegistryVersion,
            champ_v: RegistryVersion | None, n_rows: int) -> PromotionResult:
    """The table, and the comparison logged as an MLflow run."""
    result.table = format_table(result, eval_log, n_rows)
    params = {"registered_model": config.registered_model, "alias": config.alias, "candidate": cand_v.version,
              "champion": champ_v.version if champ_v else "", "eval_log": str(eval_log),
              "eval_log_sha256": result.eval_log_sha256, "eval_rows": n_rows, "tolerance": config.tolerance,
              "force": config.force, "bootstrap": config.bootstrap, "seed": config.seed, "prices": config.prices or "",
              "price_as": ",".join(f"{k}={v}" for k, v in config.price_as),
              "scored": result.candidate is not None}
    result.run_id = _log_run(config, result, params)
    return result


def rollback(config: PromoteConfig) -> PromotionResult:
    """Move the alias back to the `previous` holder (and `previous` to the one rolled back from)."""
    reg = _client(config)
    name, alias, prev = config.registered_model, config.alias, previous_alias(config.alias)
    try:
        reg.client.get_registered_model(name)
    except Exception:  # noqa: BLE001 - MLflow raises its own types for "not found"
        raise PromotionUsageError(f"no registered model {name!r} in {reg.uri}") from None
    back = _alias_version(reg, name, prev)
    if back is None:
        raise PromotionUsageError(f"{name!r} has no @{prev} version to roll back to")
    current = _alias_version(reg, name, alias)
    reg.client.set_registered_model_alias(name, alias, back.version)
    result = PromotionResult(True, "rollback", [f"rolled back from v{current.version if current else '?'}"],
                             alias_moves=[f"@{alias} -> v{back.version}"])
    if current is not None and current.version != back.version:
        reg.client.set_registered_model_alias(name, prev, current.version)
        result.alias_moves.append(f"@{prev} -> v{current.version}")
    result.table = format_table(result, None)
    result.run_id = _log_run(config, result, {"registered_model": name, "alias": alias, "to": back.version,
                                              "from": current.version if current else ""})
    return result
