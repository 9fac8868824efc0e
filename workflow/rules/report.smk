# Tables (from the runs' row.json files), the README's copy of them, and the Optuna search over (r_t, r_s).

TABLES = [f"{R}/table_{k}.md" for k in TABLE_RUNS]


rule all:
    input:
        TABLES,
        f"{R}/optuna_rt_rs.md",
    default_target: True


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
    shell:
        "python {workflow.basedir}/scripts/update_readme.py --readme README.md {input} > {log} 2>&1"


def table_rule(kind):
    """One `lofi report tables --which KIND` over exactly the runs that table needs."""
    # Only the ablation report draws plots: every report names its plots by dataset/encoder/head, so a second
    # report over a different subset of modes would overwrite them.
    flags = ["--no-plots"] if kind != "ablation" else []
    rows = [str(r.plan.row) for r in TABLE_RUNS[kind]]

    rule:
        name:
            f"table_{kind}"
        input:
            rows=rows,
        output:
            md=f"{R}/table_{kind}.md",
            csv=f"{R}/table_{kind}.csv",
            tex=f"{R}/table_{kind}.tex",
        params:
            key=[CFG.sweep.n_boot, GROUND_TRUTH],
            args=shlex.join(["--ground-truth", GROUND_TRUTH, "--out", R, "--n-boot", str(CFG.sweep.n_boot),
                             "--seed", "0", "--which", kind, *flags]),
        log:
            f"{LOGS}/table_{kind}.log",
        benchmark:
            f"{BENCH}/table_{kind}.tsv"
        shell:
            "lofi report tables --runs {input.rows:q} {params.args} > {log} 2>&1"


for _kind in TABLE_RUNS:
    table_rule(_kind)


rule optuna:
    """Optuna search over (r_t, r_s) on the validation split; best ratios re-run on fresh seeds."""
    input:
        data=DATA_DONE,
        sweep=ancient(SWEEP_JSON),
    output:
        f"{R}/optuna_rt_rs.md",
    params:
        # what a trial reads (the custom LoFi stage's key, via the plan) and the search's own settings
        key=[Planner(CFG, Path(R)).run("lofi-custom", CFG.sweep.optuna.search_seed, Path(R)).key,
             to_dict(CFG.sweep.optuna)],
        args=lofi_args("--out", f"{R}/optuna", "--report", f"{R}/optuna_rt_rs.md"),
    log:
        f"{LOGS}/optuna.log",
    benchmark:
        f"{BENCH}/optuna.tsv"
    threads: THREADS
    resources:
        gpu=GPU,
    shell:
        "lofi search {params.args} --set runtime.threads={threads} > {log} 2>&1"
