"""Optuna search over the LoFi ratios (r_t, r_s): ``study`` (the trials), ``storage`` (where the study lives, its
workers) and ``summary`` (the search's report: ranked trials, the best ratios re-run, plots)."""
