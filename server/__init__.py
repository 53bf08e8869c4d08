"""The coordinator: a Flower ServerApp that drives rounds, checkpoints and reports."""
