"""The DeepSpeed strategy (the only DeepSpeed user), model runners and the training recipe."""
