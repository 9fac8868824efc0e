"""What finished runs show: tables, figures and significance, from the tidy rows (``row.json``) only.

``build`` (what ``lofi report tables`` does), ``tables`` (the paper-style tables and their writers), ``plots``,
``stats`` (paired bootstrap / permutation over videos and seeds, Holm), ``strata`` (where a gain comes from),
``power`` (``lofi report power``), ``paper_results`` (the published numbers as data).
"""
