"""Self-supervised pre-training, a task of the training engine (``earful/train/``): its config, the
contrastive step (``task.py``), ``earful pretrain`` and ``earful gradvar``."""
