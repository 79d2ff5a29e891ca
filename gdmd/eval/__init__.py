"""Evaluation: sampling finished runs (:mod:`.harness`), prompt sets (:mod:`.prompt_sets`),
metrics from registered rewards (:mod:`.metrics`), evaluating many models on a prompt set
(:mod:`.suite`: its models and image jobs in :mod:`.plan`, generation in :mod:`.generation`,
scoring in :mod:`.scoring`, summaries in :mod:`.summary`, files in :mod:`.files`),
statistics (:mod:`.stats`), Fréchet distances (:mod:`.frechet`) and reports (:mod:`.report`,
:mod:`.html`)."""
