"""The training loop, checkpoints, and the runner behind ``gdmd run``."""
