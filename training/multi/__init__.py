"""More than two models: per-model calibrated pass probabilities and the cheapest model that clears the bar.

`heads` (one calibrated head per model on one shared embedding), `rule` (the serving rule that turns
probabilities into a model, chosen on validation for the goal), `plots` (the held-out report's
figures), `artifact` (all heads in one ONNX graph), `pipeline` (the stages in order). The
torch-free parts, shared with `router-cost savings`, are in `router_model.offline`: `multi_data`
(the log as an N-model outcome matrix with masks and per-row dollars), `multi_evaluation`
(RouterBench's cost-quality frontier and AIQ) and `multi_savings` (the N-model savings report).
"""
