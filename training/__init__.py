"""Training-side code: datasets, embedding export, heads, thresholds, baselines, artifacts, public data.

The torch-free parts it builds on (the labelled-log reader, splits, routing metrics, the savings
report) are in router_model.offline, which serving and the cost tools use without this package.
"""
