"""MLLMU-Bench evaluation: metrics, the official protocol's examples and prompts, the batched distributed
evaluator, evaluation jobs and the trainer's evaluation callback, reports, MLLMEraser steering, the relearning
attack."""
