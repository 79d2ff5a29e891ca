"""Evaluation: sampling finished runs (:mod:`.harness`) and reporting on them (:mod:`.report`)."""
