# The config and the sweep's plan.
#
# Which config the jobs see. Snakemake merges `--configfile X` over the `configfile:` default; a config file here is
# complete on its own, so when files are given on the command line only they (+ `--config`) count and default.yaml's
# keys never leak into e.g. the smoke sweep. The merged result is validated once, by the same validator every
# `lofi` command uses (harness.config.from_dict: one-line errors naming the key and the file), and written, fully
# resolved, to {results}/config.resolved.yaml — rewritten only when its content changes, so its mtime is stable —
# and every job gets that file. The file is never an `input:`: what a job depends on is its stage key (`params.key`,
# from harness/pipeline/plan.py: a hash of exactly the config sections and upstream stages it reads), and
# Snakemake 9 reruns a job whose params changed, so one changed value recomputes only what depends on it.
#
# Tracking: `lofi track init` creates the MLflow store, experiment and parent "sweep" run once before the parallel
# jobs (concurrent first use of SQLite races); each training job passes its id as --parent-run-id.

import copy
import functools
import json
import os
import re
import shlex
import sys
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError

from harness.commands.track import sweep_tracking_uri
from harness.config import evolve, from_dict, to_dict
from harness.errors import LofiError
from harness.experiment import ExperimentConfig
from harness.pipeline.plan import Planner, job_stages, slug, stage_users, sweep_root, sweep_runs, unique_stages
from harness.pipeline.stages import cli_args as stage_cli_args, then_arg as stage_then_arg
from harness.pipeline.files import plot_files
from harness.sweeplock import acquire as acquire_sweep_lock
from harness.tracking_deferred import pending_folder

_cli_files = [str(f) for f in workflow.config_settings.configfiles]
if _cli_files:
    RAW_CONFIG = copy.deepcopy(workflow.config_settings.overwrite_config)
    CONFIG_SOURCE = " + ".join(os.path.relpath(f) if not os.path.relpath(f).startswith("..") else f for f in _cli_files)
else:
    RAW_CONFIG = copy.deepcopy(dict(config))
    CONFIG_SOURCE = "config/default.yaml"


def _typed(value):
    """`--config` parses nested values with YAML's BaseLoader (every scalar a string): read them as YAML again."""
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    return yaml.safe_load(value) if isinstance(value, str) and value.strip() else value


def _merge(base, update):
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


if workflow.config_settings.config:
    _merge(RAW_CONFIG, _typed(copy.deepcopy(dict(workflow.config_settings.config))))
    CONFIG_SOURCE += " (+ --config " + ",".join(workflow.config_settings.config) + ")"
try:
    CFG = from_dict(ExperimentConfig, RAW_CONFIG, source=CONFIG_SOURCE)
    CFG = evolve(CFG, tracking=evolve(CFG.tracking, uri=sweep_tracking_uri(CFG)))  # the store beside the results
except LofiError as exc:
    raise WorkflowError(f"config error: {exc}") from None

R = CFG.sweep.results.rstrip("/")
CONFIG_FILE = f"{R}/config.resolved.yaml"


@functools.lru_cache(maxsize=None)
def _cli_args(argv):
    """Snakemake's parse of its own command line ``argv`` (a tuple), once per process: building its parser costs
    ~0.15 CPU-s. None where it is not snakemake's command line (the API)."""
    from snakemake.cli import get_argument_parser

    try:
        return get_argument_parser().parse_known_args(list(argv))[0]
    except SystemExit:
        return None


def _runs_jobs(argv):
    """Whether this snakemake invocation runs jobs (not a dry run, lint, unlock, listing, graph or report)."""
    args = _cli_args(tuple(argv))
    if args is None:  # not snakemake's command line (the API): take the lock
        return True
    quiet_modes = ("dryrun", "lint", "unlock", "summary", "detailed_summary", "list_rules", "list_target_rules")
    quiet_modes += ("dag", "rulegraph", "filegraph", "d3dag", "report", "cleanup_metadata", "list_changes")
    return not any(getattr(args, m, None) for m in quiet_modes)


def _local_jobs(argv):
    """Whether this invocation runs jobs on this machine. Decided from the command line and its profile: while the
    Snakefile is parsed Snakemake has not chosen its executor yet (``workflow.local_exec`` is True even under
    ``--profile profiles/slurm``), and a dry run runs nothing."""
    args = _cli_args(tuple(argv))
    if args is None or not _runs_jobs(argv):  # the API: leave its cores alone
        return False
    executor = getattr(args, "executor", None)
    profiles = getattr(args, "profile", None) or os.environ.get("SNAKEMAKE_PROFILE") or []
    if executor is None:
        # a path, or a name Snakemake looks up in the user's profile folder; one or several (a list)
        for profile in [profiles] if isinstance(profiles, (str, Path)) else list(profiles):
            dirs = [Path(profile), Path.home() / ".config/snakemake" / str(profile)]
            for path in (d / name for d in dirs for name in ("config.v8+.yaml", "config.yaml")):
                if path.is_file():
                    executor = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("executor", executor)
                    break
    return executor in (None, "local")


# One sweep per results folder (harness/sweeplock.py), taken before Snakemake checks any file and before the
# resolved config below is rewritten; held until this process ends. Jobs (remote/subprocess) never take it.
if workflow.is_main_process and _runs_jobs(sys.argv[1:]):
    try:
        SWEEP_LOCK = acquire_sweep_lock(R)
    except LofiError as exc:
        raise WorkflowError(str(exc)) from None


def _write_if_changed(path, text):
    p = Path(path)
    if p.is_file() and p.read_text(encoding="utf-8") == text:
        return  # same content: keep the mtime
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f"{p.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(p)


_write_if_changed(
    CONFIG_FILE,
    f"# Written by the Snakefile from {CONFIG_SOURCE}: the resolved config every job reads. Do not edit.\n"
    + yaml.safe_dump(to_dict(CFG), sort_keys=False),
)

DATASET = CFG.data.name
ENCODERS = tuple(CFG.sweep.encoders)
HEADS = tuple(CFG.sweep.heads)
# Resources. Every rule declares what it needs, so one workflow runs on a laptop (profiles/local) and on a cluster
# (profiles/slurm: the SLURM executor turns threads, mem_mb, runtime and gpu into the sbatch request). Training
# jobs (stages, runs, the search) take the sweep's per-job values; the light jobs (data, tracking, tables) LIGHT.
THREADS = CFG.sweep.threads_per_job
GPU = CFG.sweep.gpu_per_job
MEM_MB = CFG.sweep.mem_mb_per_job
RUNTIME = CFG.sweep.runtime_per_job  # minutes
LIGHT = {"mem_mb": 2000, "runtime": 30}
# No more cores than this machine has CPUs where the jobs run on it (issue 18): `--cores 8` on a 2-CPU machine would
# run 8 single-threaded torch jobs (and fan-out jobs of 8 processes) on 2 CPUs. A cluster executor's --cores is the
# cluster's and its jobs re-read this file: both left alone; a smaller count than the CPUs is kept as asked.
if workflow.is_main_process and _local_jobs(sys.argv[1:]):
    try:
        _ASKED = workflow.cores
    except WorkflowError:  # no --cores where no job runs (--report)
        _ASKED = None
    _CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if _ASKED is not None and _ASKED > _CPUS:
        workflow.global_resources["_cores"] = _CPUS
        if _runs_jobs(sys.argv[1:]):
            print(
                f"lofi-bench: --cores {_ASKED} on a machine with {_CPUS} CPU(s): at most {_CPUS} job(s) at a time",
                file=sys.stderr,
            )
# Jobs that fan out over processes (rendering the synthetic data, decoding frames): at most 8, never more than
# Snakemake's cores. Decided from `workflow.cores` alone, never from this machine's CPU count: on a cluster the
# submitting process and the job read the same --cores (the executor passes it on), so the --cpus-per-task a job
# asks for is the number of processes it starts, whatever the login node's and the compute node's CPU counts.
try:
    FANOUT = min(workflow.cores, 8)
except WorkflowError:  # no --cores where no job runs (--report): any count will do
    FANOUT = 8
# sweep.cluster_group: every stage and run job in one Snakemake group, so that on a cluster a seed's jobs (a connected
# part of the graph) are one submission; `--group-components stages=N` packs N seeds. Local runs ignore groups.
GROUP = "stages" if CFG.sweep.cluster_group else None
# How a training job starts `lofi`: plain `lofi`, or e.g. torchrun with one process per GPU of the job.
LAUNCH = CFG.sweep.launcher.format(gpus=GPU)
GROUND_TRUTH = str(CFG.data.annotations_path())
SWEEP_JSON = f"{R}/mlflow_sweep.json"
LOGS = f"{R}/logs"
BENCH = f"{R}/benchmarks"

# The runs each table needs (the first encoder and head for the single-model tables), planned once.
try:
    TABLE_RUNS = {
        "ablation": sweep_runs(CFG, CFG.sweep.ablation_modes, encoders=ENCODERS[:1], heads=HEADS[:1]),
        "pretrain": sweep_runs(CFG, CFG.sweep.pretrain_modes, encoders=ENCODERS[:1], heads=HEADS[:1]),
        "models": sweep_runs(CFG, CFG.sweep.model_modes),
        # the controls: their modes on the sweep's seeds, and the negative control (acp) on other seeds
        "controls": sweep_runs(CFG, CFG.sweep.control_modes, encoders=ENCODERS[:1], heads=HEADS[:1])
        + sweep_runs(CFG, ("acp",), encoders=ENCODERS[:1], heads=HEADS[:1], seeds=CFG.sweep.control_seeds),
    }
    TABLE_RUNS["memory"] = TABLE_RUNS["ablation"]
    # where each gain comes from: the ablation's and the controls' runs on the sweep's seeds (the floor first)
    TABLE_RUNS["strata"] = sweep_runs(
        CFG, ("blind", *CFG.sweep.ablation_modes, *CFG.sweep.control_modes), encoders=ENCODERS[:1], heads=HEADS[:1]
    )
    ALL_RUNS = list({str(r.plan.row): r for runs in TABLE_RUNS.values() for r in runs}.values())
    ALL_STAGES = unique_stages(ALL_RUNS)
    # The table jobs (report.smk). The ablation table is never read without its controls (is e2e-full ahead of ACP?
    # where is the floor?): one job builds them together (with the strata: where each gain comes from), so
    # `snakemake results/table_ablation.md` makes the controls and the strata too.
    TABLE_JOBS = {
        "ablation": ("ablation", "controls", "strata"),
        "pretrain": ("pretrain",),
        "models": ("models",),
        "memory": ("memory",),
    }
    # sweep.join_stages: features and classifier in the job of the encoder they read, where every table job that
    # reads the encoder reads them too (a table never computes a stage it does not read)
    _USERS = stage_users({job: [r for k in kinds for r in TABLE_RUNS[k]] for job, kinds in TABLE_JOBS.items()})
    STAGE_JOBS = job_stages(ALL_STAGES, join=CFG.sweep.join_stages, users=_USERS)
except LofiError as exc:
    raise WorkflowError(f"config error: {exc}") from None


def rule_name(*parts):
    """A rule name from path parts (encoder names may hold characters rule names cannot)."""
    return re.sub(r"\W+", "_", "_".join(str(p) for p in parts)).strip("_")


def rel(path):
    """A stage folder relative to the results folder: names its log and benchmark files."""
    return os.path.relpath(path, R)


def parent_run(wildcards, input):
    """The sweep's MLflow run id (a function of `input`, so Snakemake does not compare it as a parameter)."""
    p = Path(SWEEP_JSON)
    if not p.is_file():  # only while printing a dry run; a job runs after its input exists
        return "<from-mlflow_sweep.json>"
    return json.loads(p.read_text())["sweep_run_id"] or '""'  # tracking off: no parent


def lofi_args(*args, command=()):
    """Arguments of a `lofi [command...]` call: the resolved config first, every value shell-quoted (they come
    from the config, e.g. an encoder name)."""
    return shlex.join([*command, "--config", CONFIG_FILE, *[str(a) for a in args]])
