"""Smaller and faster models from a trained run: pruning (prune.py, channels.py) and the table
that compares every smaller form of a run (table.py). Quantization and ExecuTorch programs are
exports (kiln/deploy); distillation is training (distill.teacher, kiln/engine/distill.py)."""
