"""Observation mode: the decision log the service writes (`decision_log`) and its report (`report`)."""
