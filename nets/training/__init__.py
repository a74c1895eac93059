"""Training a DDPM: the run's config, one optimizer step, the loop around it, its log and figures.

``config`` (TrainConfig and the schedules of lr and EMA decay) → ``step`` (one batch, one
optimizer step) → ``loop`` (steps, logging, the NaN check, checkpoints, signals, the stop vote)
→ ``metrics_log`` (metrics.jsonl) and ``figures`` (the run's three figures). ``distributed``
holds the torchrun plumbing the loop calls. The command is ``nets/train.py``.
"""
