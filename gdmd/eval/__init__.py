"""Evaluation: sampling finished runs (:mod:`.harness`), prompt sets (:mod:`.prompt_sets`),
metrics from registered rewards (:mod:`.metrics`), evaluating many models on a prompt set
(:mod:`.suite`), statistics (:mod:`.stats`), Fréchet distances (:mod:`.frechet`) and reports
(:mod:`.report`, :mod:`.html`)."""
