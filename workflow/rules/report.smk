# Tables (from the runs' row.json files), the README's copy of them, and the Optuna search over (r_t, r_s).

TABLES = [f"{R}/table_{k}.md" for k in TABLE_RUNS]
# TABLE_JOBS (common.smk): which tables each table job builds


# `snakemake --report results/report.html`: the table files and plots below are flagged report(), with captions
# under workflow/report/; Snakemake adds every job's run time (its statistics page).
REPORT = f"{workflow.basedir}/workflow/report"
TABLE_TITLES = {
    "ablation": "1 LoFi configurations",
    "controls": "2 Controls",
    "strata": "3 Strata",
    "pretrain": "4 Pre-training methods",
    "models": "5 Encoders x heads",
    "memory": "6 Activation memory",
}


def in_report(path, caption, **flags):
    """``report(path, ...)`` (a function: Snakemake's parser reads a line starting with `report` as the directive)."""
    return report(path, caption=f"{REPORT}/{caption}", **flags)


def table_outputs(kinds):
    """The files of one table job; the page (with its footnotes) and the CSV (every column) go into the report."""
    files = []
    for k in kinds:
        files += [f"{R}/table_{k}.md", f"{R}/table_{k}.tex"]
        for ext in ("html", "csv"):
            labels = {"table": TABLE_TITLES[k], "file": ext}
            files.append(
                in_report(
                    f"{R}/table_{k}.{ext}", "table.rst", category="Tables", subcategory=TABLE_TITLES[k], labels=labels
                )
            )
    if "ablation" in kinds:  # the one report that draws plots (see table_rule)
        for path, what in zip(plot_files(Path(R), DATASET, ENCODERS[0], HEADS[0]), ("mAP vs tIoU", "mAP vs memory")):
            files.append(in_report(str(path), "plot.rst", category="Plots", labels={"plot": what}))
    return files


rule all:
    default_target: True
    input:
        TABLES,
        f"{R}/optuna_rt_rs.md",


rule tables:
    input:
        TABLES,


rule readme:
    """Insert the tables into README.md between <!-- tables:start --> and <!-- tables:end -->."""
    input:
        TABLES,
    log:
        f"{LOGS}/readme.log",
    benchmark:
        f"{BENCH}/readme.tsv"
    resources:
        **LIGHT,
    params:
        script=f"{workflow.basedir}/scripts/update_readme.py",
    shell:
        "python {params.script:q} --readme README.md {input:q} > {log:q} 2>&1"


# tracking.defer: the jobs recorded their MLflow runs beside the store; each table job logs what is recorded before
# it builds its table (one MLflow import for the sweep instead of one per job: harness/tracking_deferred.py).
FLUSH = (
    lofi_args("--keep-going", command=["track", "flush"])
    if CFG.tracking.enabled and CFG.tracking.defer and pending_folder(CFG.tracking.uri) is not None
    else ""
)


def table_rule(kind, kinds):
    """One `lofi report tables --which KINDS` over exactly the runs those tables need."""
    # Only the ablation report draws plots: every report names its plots by dataset/encoder/head, so a second
    # report over a different subset of modes would overwrite them.
    flags = ["--no-plots"] if kind != "ablation" else []
    rows = list(dict.fromkeys(str(r.plan.row) for k in kinds for r in TABLE_RUNS[k]))

    rule:
        name:
            f"table_{kind}"
        input:
            rows=rows,
        output:
            table_outputs(kinds),
        log:
            f"{LOGS}/table_{kind}.log",
        benchmark:
            f"{BENCH}/table_{kind}.tsv"
        localrule: True
        resources:
            **LIGHT,
        params:
            key=[CFG.sweep.n_boot, GROUND_TRUTH],
            args=lofi_args(
                "--ground-truth",
                GROUND_TRUTH,
                "--out",
                R,
                "--n-boot",
                CFG.sweep.n_boot,
                "--seed",
                0,
                "--which",
                ",".join(kinds),
                *flags,
            ),
            flush=FLUSH,
        shell:
            ("lofi {params.flush} > {log:q} 2>&1 && " if FLUSH else "")
            + "lofi report tables --runs {input.rows:q} {params.args} %s {log:q} 2>&1" % (">>" if FLUSH else ">")


for _kind, _kinds in TABLE_JOBS.items():
    table_rule(_kind, _kinds)


OPTUNA = CFG.sweep.optuna
# what a trial reads (the custom LoFi stage's key, via the plan) and the search's own settings
OPTUNA_KEY = [
    Planner(CFG, Path(R)).run("lofi-custom", OPTUNA.search_seed, Path(R)).key,
    {k: v for k, v in to_dict(OPTUNA).items() if k != "workers"},
]
# A worker runs its share of the trials; several workers split the study between them (they stop at exactly
# sweep.optuna.trials finished trials together), so each asks for ceil(trials / workers) jobs' time and more.
OPTUNA_RUNTIME = RUNTIME * (-(-OPTUNA.trials // OPTUNA.workers) + 1)
OPTUNA_WORKERS = [f"{R}/optuna/worker{k}.done" for k in range(OPTUNA.workers)] if OPTUNA.workers > 1 else []


def optuna_worker_rule(k):

    rule:
        name:
            f"optuna_worker{k}"
        input:
            data=DATA_DONE,
            frames=ancient(FRAMES_DONE),  # an order, not a trigger: reruns follow data and keys
            sweep=ancient(SWEEP_JSON),
        output:
            touch(OPTUNA_WORKERS[k]),
        log:
            f"{LOGS}/optuna_worker{k}.log",
        benchmark:
            f"{BENCH}/optuna_worker{k}.tsv"
        threads: THREADS
        resources:
            gpu=GPU,
            mem_mb=MEM_MB,
            runtime=OPTUNA_RUNTIME,
        params:
            key=OPTUNA_KEY,
            args=lofi_args("--out", f"{R}/optuna", "--no-report"),
        shell:
            "lofi search {params.args} --set runtime.threads={threads} > {log:q} 2>&1"


for _k in range(len(OPTUNA_WORKERS)):
    optuna_worker_rule(_k)


rule optuna:
    """Optuna search over (r_t, r_s) on the validation split; best ratios re-run on fresh seeds. With
    sweep.optuna.workers > 1 the trials are run by the worker jobs first and this job finds them finished."""
    input:
        data=DATA_DONE,
        frames=ancient(FRAMES_DONE),
        sweep=ancient(SWEEP_JSON),
        workers=OPTUNA_WORKERS,
    output:
        f"{R}/optuna_rt_rs.md",
    log:
        f"{LOGS}/optuna.log",
    benchmark:
        f"{BENCH}/optuna.tsv"
    threads: THREADS
    resources:
        gpu=GPU,
        mem_mb=MEM_MB,
        runtime=OPTUNA_RUNTIME,
    params:
        key=OPTUNA_KEY,
        args=lofi_args("--out", f"{R}/optuna", "--report", f"{R}/optuna_rt_rs.md"),
    shell:
        "lofi search {params.args} --set runtime.threads={threads} > {log:q} 2>&1"


onstart:
    # Once, in the command the user typed, when the jobs to run are known (not in a dry run, nor in a cluster job).
    from collections import Counter
    from snakemake.logging import logger
    from harness.bench.cost import estimate_message, rule_kind

    _jobs = Counter(rule_kind(job.rule.name) for job in workflow.dag.needrun_jobs())
    _jobs.pop(None, None)
    logger.info(
        "lofi-bench: "
        + estimate_message(CFG.data.synthetic_profile, _jobs, min(workflow.cores or 1, os.cpu_count() or 1))
    )
