"""Training-side code: log reading, splits, metrics, thresholds, baselines, public data."""
