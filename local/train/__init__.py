"""Training: the one trainer (loop.py; its settings and schedule in trainer_config.py, its
checkpoint files in checkpoint.py, its process in runtime.py) and the losses of each stage."""
