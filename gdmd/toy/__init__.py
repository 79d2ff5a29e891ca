"""The CPU-scale text-to-image domain of the benchmark (DESIGN.md section 5).

Small RGB renders of coloured shapes described by compositional prompts, the GenEval analogue:

* :mod:`gdmd.toy.grammar`: the prompt grammar, its parser and the train/evaluation split;
* :mod:`gdmd.toy.render`: the procedural renderer and training batches;
* :mod:`gdmd.toy.checker`: the exact rule-based checker (decides from pixels);
* :mod:`gdmd.toy.alignment`: a learned, differentiable prompt-alignment reward (CLIP-style);
* :mod:`gdmd.toy.evaluator`: features for a Frechet distance, and a diversity measure;
* :mod:`gdmd.toy.cache`: train-on-first-use cache entries for the toy models;
* :mod:`gdmd.toy.factories`: the config models and factories that plugins register.

Importing this package imports nothing heavy; each submodule states what it needs.
"""
