"""Training: the entry every launcher calls (``entry``), the trainer and its callback events (``trainer``), the
DeepSpeed strategy, the only DeepSpeed user (``strategy``), model runners, checkpoints, stop signals and non-finite
guards, throughput and MFU."""
