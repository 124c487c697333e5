"""MLLMU-Bench evaluation: metrics, the batched distributed evaluator, reports."""
