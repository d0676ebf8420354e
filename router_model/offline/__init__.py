"""Offline evaluation of a router on labelled logs, without the training stack (numpy only).

`router-cost savings` and `router-promote` score a trained router on a labelled request log and
report what it saves; training scores its candidates with the same numbers. None of that needs
torch, scikit-learn or MLflow, so it lives here, beside the serving core, and `router_model` stays
installable and usable without `training/`: the labelled-log row format and reader (`row`, `log`),
per-request dollars (`costs`), the leak-free split by prompt (`split`), the routing and
calibration metrics (`metrics`), the two-model savings report (`savings`, its command line in
`savings_cli`) and the N-model one (`multi_data`, `multi_evaluation`, `multi_savings`). Training
imports from here; nothing here imports `training`.
"""
