"""Training: the loop (:mod:`~gdmd.train.loop`), its state and checkpoint payloads
(:mod:`~gdmd.train.state`), its configuration (:mod:`~gdmd.train.config`), checkpoints,
randomness and multi-process helpers. Importing this package imports no torch."""
