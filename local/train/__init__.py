"""Training: the one trainer (loop.py) and the losses and schedules of each stage."""
