# lofi-bench workflow: encoders × heads × pre-training modes × LoFi cycles × seeds -> tables.
#
#   snakemake --cores 8 results/table_ablation.md                         the default (synthetic) benchmark
#   snakemake --cores 2 results/smoke/table_ablation.md --configfile config/smoke.yaml
#   snakemake all --cores 8 --resources gpu=4 --configfile config/activitynet.yaml
#   snakemake --cores 8 readme                                            tables -> README.md
#   snakemake --profile profiles/local results/table_ablation.md           the same through a profile
#   snakemake all --profile profiles/slurm --configfile config/activitynet.yaml   on a SLURM cluster (docs/cluster.md)
#
# The rules live in workflow/rules/: common.smk (the config, validated once, and the sweep's stage plan),
# stages.smk (one job per shared stage and per run), report.smk (tables, README, Optuna). Every path and rerun key
# comes from harness/pipeline/plan.py; the rules are thin and call `lofi` (see `lofi --help`).

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/default.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/stages.smk"
include: "workflow/rules/report.smk"


# Aggregates and light bookkeeping run where Snakemake runs (on a cluster: the submitting node), never as jobs; the
# generated table rules say so themselves (`localrule: True` in report.smk).
localrules:
    all,
    tables,
    track_init,
    readme,
