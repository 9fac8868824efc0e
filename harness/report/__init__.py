"""What finished runs show: tables, figures and significance, from the tidy rows (``row.json``) only.

``build`` (what ``lofi report tables`` does); ``rows`` (reading ``row.json``, mode labels, the ``Table``); ``tables``
(ablation, pre-training, models, memory) and ``controls``; ``cells`` and ``notes`` (what a table shows); ``writers``
(.md/.csv/.tex/.html); ``plots``; ``stats`` (paired bootstrap / permutation over videos and seeds, Holm) on
``weighted_ap`` (the evaluator's mAP of resampled videos, batched); ``strata`` (where a gain comes from); ``power``
(``lofi report power``); ``paper_results`` (the published numbers as data).
"""
