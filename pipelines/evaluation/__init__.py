"""Evaluation the way the paper scores it: accuracy tables, evaluate a model, the generalization protocol, reports."""
