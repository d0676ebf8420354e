"""More than two models: per-model calibrated pass probabilities and the cheapest model that clears the bar.

`data` (the log as an N-model outcome matrix with masks and per-row dollars), `heads` (one
calibrated head per model on one shared embedding), `policy` (the rule that turns probabilities
into a model, chosen on validation for the goal), `evaluation` (RouterBench's cost-quality
frontier and AIQ), `artifact` (all heads in one ONNX graph), `pipeline` (the stages in order).
"""
