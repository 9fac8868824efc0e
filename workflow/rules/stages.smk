# One job per shared stage (pre-training, LoFi, features, classifier) and one per run (final head + row.json), all
# taken from the plan (harness/pipeline/plan.py): outputs are the stages' done.json, inputs their upstream stages'
# done.json, `params.key` the stage key (a changed key reruns the job; Snakemake deletes a job's outputs first).


if CFG.data.synthetic_profile:
    DATA_DONE = f"{CFG.data.root}/manifest.json"

    rule data:
        output:
            DATA_DONE,
        log:
            f"{LOGS}/data.log",
        benchmark:
            f"{BENCH}/data.tsv"
        # the first job, alone: every file is rendered in parallel (same bytes for any count; 2 processes: 1.99x)
        threads: FANOUT
        resources:
            **LIGHT,
        params:
            key=[CFG.data.synthetic_profile, CFG.data.synthetic_seed],
            args=shlex.join(
                [
                    "--profile",
                    CFG.data.synthetic_profile,
                    "--seed",
                    str(CFG.data.synthetic_seed),
                    "--out",
                    str(CFG.data.root),
                ]
            ),
        shell:
            "lofi data synth {params.args} --jobs {threads} --no-progress > {log:q} 2>&1"

else:
    DATA_DONE = GROUND_TRUTH  # real data: the annotations must exist (videos are checked by the stages)

FRAMES_DONE = f"{R}/frames.json"


rule frames:
    """Every video and ACP clip decoded once into the frame store, in parallel, before the training jobs: without
    it the first parallel jobs each decode the same videos (8 jobs at once: up to 8 times)."""
    input:
        DATA_DONE,
    output:
        FRAMES_DONE,
    log:
        f"{LOGS}/frames.log",
    benchmark:
        f"{BENCH}/frames.tsv"
    # all cores of this machine (alone: it runs before every training job); on a cluster a job of its own, with a
    # training job's memory and time (decoding a real dataset takes hours) and no GPU
    threads: FANOUT
    resources:
        mem_mb=MEM_MB,
        runtime=RUNTIME,
    params:
        key=to_dict(CFG.data),
        args=lofi_args("--json", command=["data", "prepare"]),
        # everything checkable before training (data, labels, files, the sweep's weights; the device is each
        # training job's own): this job runs before every training job (harness/pipeline/preflight.py)
        check=lofi_args("--against-machine", "--no-device", command=["config", "check"]),
    shell:
        "lofi {params.check} > {log:q} 2>&1 && lofi {params.args} --workers {threads} > {output:q} 2>> {log:q}"


rule track_init:
    output:
        SWEEP_JSON,
    log:
        f"{LOGS}/track_init.log",
    benchmark:
        f"{BENCH}/track_init.tsv"
    resources:
        **LIGHT,
    params:
        key=to_dict(CFG.tracking),
        args=lofi_args("--out", SWEEP_JSON),
    shell:
        "lofi track init {params.args} > {log:q} 2>&1"


def stage_rule(run, stages):
    """The job of one shared stage, and of the stages that join it (`sweep.join_stages`: features and classifier
    scores of the encoder it trains, in its process); `run` is a run that needs it (its config: same encoder)."""
    stage, joined = stages[0], stages[1:]
    folder = str(stage.folder)
    inside = {s.folder for s in stages}

    rule:
        name:
            rule_name(stage.kind, run.encoder, stage.folder.relative_to(sweep_root(CFG, run.encoder)))
        input:
            data=DATA_DONE,
            frames=ancient(FRAMES_DONE),  # an order, not a trigger: reruns follow data and keys
            sweep=ancient(SWEEP_JSON),
            needs=list(dict.fromkeys(str(n.done) for s in stages for n in s.needs if n.folder not in inside)),
        output:
            [str(s.done) for s in stages],
        log:
            f"{LOGS}/{rel(folder)}.log",
        benchmark:
            f"{BENCH}/{rel(folder)}.tsv"
        group:
            GROUP
        threads: THREADS
        resources:
            gpu=GPU,
            mem_mb=MEM_MB,
            runtime=RUNTIME,
        params:
            key=" ".join(s.key for s in stages),  # one stage: its key, as before joining existed
            args=lofi_args(
                *stage_cli_args(stage),  # the declared option (harness/pipeline/stages.py)
                "--seed",
                stage.seed,
                "--set",
                f"encoder.name={run.encoder}",
                "--stages",
                sweep_root(CFG, run.encoder),
                *[arg for s in joined for arg in ("--then", stage_then_arg(s))],
                command=[stage.kind],
            ),
            parent=parent_run,
        shell:
            f"{LAUNCH} stage {{params.args}} --set"
            " runtime.threads={threads} --parent-run-id {params.parent:q} > {log:q} 2>&1"


def run_rule(run):
    """One configuration's final head, metrics and row.json (its shared stages are jobs of their own)."""
    plan = run.plan

    rule:
        name:
            rule_name("run", run.encoder, run.head, slug(plan.mode), f"seed{plan.seed}")
        input:
            needs=[str(s.done) for s in plan.stages if s.kind != "head"],
            sweep=ancient(SWEEP_JSON),
        output:
            row=str(plan.row),
            head=str(plan.head.done),
        log:
            f"{LOGS}/{rel(plan.run_dir)}.log",
        benchmark:
            f"{BENCH}/{rel(plan.run_dir)}.tsv"
        group:
            GROUP
        threads: THREADS
        resources:
            gpu=GPU,
            mem_mb=MEM_MB,
            runtime=RUNTIME,
        params:
            key=plan.key,
            args=lofi_args(
                "--mode",
                plan.mode,
                "--seed",
                plan.seed,
                "--head",
                run.head,
                "--set",
                f"encoder.name={run.encoder}",
                "--stages",
                sweep_root(CFG, run.encoder),
                "--out",
                plan.run_dir,
            ),
            parent=parent_run,
        shell:
            f"{LAUNCH} run {{params.args}} --set"
            " runtime.threads={threads} --parent-run-id {params.parent:q} > {log:q} 2>&1"


for _run, _stages in STAGE_JOBS:
    stage_rule(_run, _stages)
for _run in ALL_RUNS:
    run_rule(_run)
