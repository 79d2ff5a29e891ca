"""A run: its directory (:mod:`gdmd.run.rundir`), its parts (:mod:`gdmd.run.build`) and
running it (:mod:`gdmd.run.session`). Importing this package imports no torch."""
