"""Training: the set-up (setup.py), the loop (trainer.py), a run from start to end (run.py), the
evaluation of a finished run (evaluate.py), callbacks, devices, optimizers, several processes."""
