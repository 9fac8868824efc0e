# lofi-bench workflow: encoders × heads × pre-training modes × LoFi cycles × seeds -> tables.
#
#   snakemake --cores 8 results/table_ablation.md                         the default (synthetic) benchmark
#   snakemake --cores 2 results/smoke/table_ablation.md --configfile config/smoke.yaml
#   snakemake --cores 8 --resources gpu=4 all --configfile config/activitynet.yaml
#   snakemake --cores 8 readme                                            tables -> README.md
#
# Rules are thin: each calls one `lofi` command (see `lofi --help`). Stage folders hold done.json only when the
# stage finished; an interrupted stage resumes from its checkpoint.pt when the job is re-run.
#
# Which config the jobs see. Snakemake merges `--configfile X` over the `configfile:` default below; a config file
# here is complete on its own, so when files are given on the command line only they (+ `--config`) count and
# default.yaml's keys never leak into e.g. the smoke sweep. The merged result is validated at parse time
# (harness.config.from_dict: one-line errors naming the key and the file; then config/schema.json through
# snakemake.utils.validate) and written, fully resolved, to {results}/config.resolved.yaml — rewritten only when its
# content changes, so its mtime is stable — and every job gets that file. `--config` overrides (top-level keys)
# therefore reach `lofi` too. The file is never an `input:`: what a job depends on is its `params.hash`, a hash of
# only the config sections it reads (Snakemake 9 reruns a job whose params changed: rerun trigger "params", on by
# default), so one changed value recomputes only what depends on it.
#
# Tracking: `lofi track init` creates the MLflow store, experiment and parent "sweep" run once before the parallel
# jobs (concurrent first use of SQLite races); each training job passes its id as --parent-run-id.

import copy
import hashlib
import json
import os
import re
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

from harness.commands.track import sweep_tracking_uri
from harness.config import from_dict, to_dict
from harness.errors import ConfigError
from harness.experiment import MODE_PLAN, ExperimentConfig

min_version("9.0")


configfile: "config/default.yaml"


# ---------------------------------------------------------------------------------------------------- the config
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
except ConfigError as exc:
    raise WorkflowError(f"config error: {exc}") from None
validate(copy.deepcopy(RAW_CONFIG), "config/schema.json", set_default=False)

RESOLVED = to_dict(CFG)
RESOLVED["tracking"]["uri"] = sweep_tracking_uri(CFG)  # the store beside the sweep's results (see lofi track)
R = CFG.sweep.results.rstrip("/")
CONFIG_FILE = f"{R}/config.resolved.yaml"


def _write_if_changed(path, text):
    p = Path(path)
    if p.is_file() and p.read_text(encoding="utf-8") == text:
        return  # same content: keep the mtime
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(p)


_write_if_changed(
    CONFIG_FILE,
    f"# Written by the Snakefile from {CONFIG_SOURCE}: the resolved config every job reads. Do not edit.\n"
    + yaml.safe_dump(RESOLVED, sort_keys=False),
)


# ---------------------------------------------------------------------------------------------- names and hashes
def slug(mode):
    """A wildcard-/path-safe name: acp+ -> acpplus."""
    return mode.replace("+", "plus")


MODE_OF_SLUG = {slug(m): m for m in MODE_PLAN}
SWEPT_CYCLES = ("S", "T", "ST", "long", "short", "full")  # `custom` only through Optuna (lofi search)
DATASET = CFG.data.name
SEEDS = list(CFG.sweep.seeds)
ENCODERS = list(CFG.sweep.encoders)
HEADS = list(CFG.sweep.heads)
THREADS = CFG.sweep.threads_per_job
GPU = CFG.sweep.gpu_per_job
GROUND_TRUTH = str(CFG.data.annotations_path())
SWEEP_JSON = f"{R}/mlflow_sweep.json"
LOGS = f"{R}/logs"
BENCH = f"{R}/benchmarks"
BASE = f"{R}/{{dataset}}/{{encoder}}"


def _alt(names):
    return "|".join(re.escape(n) for n in names)


wildcard_constraints:
    dataset=re.escape(DATASET),
    encoder=_alt(ENCODERS),
    head=_alt(HEADS),
    seed=r"\d+",
    pmode="icp|acp|acpplus",
    cycle=_alt(SWEPT_CYCLES),
    source="icp|acp|acpplus|" + _alt(f"lofi-{c}" for c in SWEPT_CYCLES),
    mode=_alt(slug(m) for m, (_, c) in MODE_PLAN.items() if c != "custom"),


def _digest(obj):
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _sections(names, encoder, head=None, cycle=None):
    """The config sections a stage reads (with the job's encoder/head), minus keys that cannot change results."""
    out = {n: copy.deepcopy(RESOLVED[n]) for n in names}
    if "data" in out:
        out["data"].pop("cache_dir", None)  # where decoded frames are cached
    out["encoder"]["name"] = encoder
    if "head" in out and head is not None:
        out["head"]["name"] = head
    if "lofi" in out:
        drop = {"r_t", "r_s"}  # `custom` only (not swept here)
        if cycle != "long":
            drop.add("c_l")
        if cycle != "short":
            drop.add("c_s")
        out["lofi"] = {k: v for k, v in out["lofi"].items() if k not in drop}
    return out


PRETRAIN_SECTIONS = ("data", "fidelity", "encoder", "pretrain")


def pretrain_hash(wc):
    return _digest(_sections(PRETRAIN_SECTIONS, wc.encoder))


def lofi_hash(wc):
    return _digest(_sections(PRETRAIN_SECTIONS + ("lofi",), wc.encoder, cycle=wc.cycle))


def features_hash(wc):
    cycle = wc.source[len("lofi-"):] if wc.source.startswith("lofi-") else None
    names = PRETRAIN_SECTIONS + (("lofi",) if cycle else ())
    return _digest(_sections(names, wc.encoder, cycle=cycle))


def run_hash(wc):
    cycle = MODE_PLAN[MODE_OF_SLUG[wc.mode]][1]
    names = PRETRAIN_SECTIONS + (("lofi",) if cycle else ()) + ("head", "post")
    return _digest(_sections(names, wc.encoder, head=wc.head, cycle=cycle))


def parent_run(wildcards, input):
    """The sweep's MLflow run id (a function of `input`, so Snakemake does not compare it as a parameter)."""
    p = Path(SWEEP_JSON)
    if not p.is_file():  # only while printing a dry run; a job runs after its input exists
        return "<from-mlflow_sweep.json>"
    return json.loads(p.read_text())["sweep_run_id"] or '""'  # tracking off: no parent


# What every `lofi` call gets: the resolved config, this job's threads, the encoder the path names.
LOFI_ARGS = "--config {CONFIG_FILE} --set runtime.threads={threads} --set encoder.name={wildcards.encoder}"


# -------------------------------------------------------------------------------------------------------- targets
def row_path(encoder, head, mode, seed):
    return f"{R}/{DATASET}/{encoder}/{head}/{slug(mode)}/seed{seed}/row.json"


def rows(encoders, heads, modes):
    return [row_path(e, h, m, s) for e in encoders for h in heads for m in modes for s in SEEDS]


TABLE_RUNS = {
    "ablation": rows(ENCODERS[:1], HEADS[:1], CFG.sweep.ablation_modes),
    "pretrain": rows(ENCODERS[:1], HEADS[:1], CFG.sweep.pretrain_modes),
    "models": rows(ENCODERS, HEADS, CFG.sweep.model_modes),
    "memory": rows(ENCODERS[:1], HEADS[:1], CFG.sweep.ablation_modes),
}
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


# --------------------------------------------------------------------------------------------------------- rules
if CFG.data.synthetic_profile:
    DATA_DONE = f"{CFG.data.root}/manifest.json"

    rule data:
        output:
            DATA_DONE,
        params:
            hash=_digest([CFG.data.synthetic_profile, CFG.data.synthetic_seed]),
        log:
            f"{LOGS}/data.log",
        benchmark:
            f"{BENCH}/data.tsv"
        threads: THREADS
        shell:
            "lofi data synth --profile {CFG.data.synthetic_profile} --seed {CFG.data.synthetic_seed} "
            "--out {CFG.data.root} --no-progress > {log} 2>&1"

else:
    DATA_DONE = GROUND_TRUTH  # real data: the annotations must exist (videos are checked by the stages)


rule track_init:
    output:
        SWEEP_JSON,
    params:
        hash=_digest(RESOLVED["tracking"]),
    log:
        f"{LOGS}/track_init.log",
    benchmark:
        f"{BENCH}/track_init.tsv"
    shell:
        "lofi track init --config {CONFIG_FILE} --out {output} > {log} 2>&1"


def pretrain_inputs(wc):
    inputs = {"data": DATA_DONE, "sweep": ancient(SWEEP_JSON)}
    if wc.pmode == "acpplus":  # ACP+ fine-tunes the ACP encoder of the same seed
        inputs["acp"] = f"{R}/{wc.dataset}/{wc.encoder}/pretrain/acp/seed{wc.seed}/done.json"
    return inputs


rule pretrain:
    input:
        unpack(pretrain_inputs),
    output:
        f"{BASE}/pretrain/{{pmode}}/seed{{seed}}/done.json",
    params:
        hash=pretrain_hash,
        mode=lambda wc: MODE_OF_SLUG[wc.pmode],
        init=lambda wc: f"--init {R}/{wc.dataset}/{wc.encoder}/pretrain/acp/seed{wc.seed}/encoder.pt"
        if wc.pmode == "acpplus" else "",
        parent=parent_run,
    log:
        f"{LOGS}/{{dataset}}/{{encoder}}/pretrain-{{pmode}}-seed{{seed}}.log",
    benchmark:
        f"{BENCH}/{{dataset}}/{{encoder}}/pretrain-{{pmode}}-seed{{seed}}.tsv"
    threads: THREADS
    resources:
        gpu=GPU,
    shell:
        "lofi stage pretrain " + LOFI_ARGS + " --mode {params.mode:q} --seed {wildcards.seed} {params.init} "
        "--parent-run-id {params.parent} --out $(dirname {output}) > {log} 2>&1"


rule lofi:
    input:
        data=DATA_DONE,
        sweep=ancient(SWEEP_JSON),
        acp=f"{BASE}/pretrain/acp/seed{{seed}}/done.json",
    output:
        f"{BASE}/lofi/{{cycle}}/seed{{seed}}/done.json",
    params:
        hash=lofi_hash,
        parent=parent_run,
    log:
        f"{LOGS}/{{dataset}}/{{encoder}}/lofi-{{cycle}}-seed{{seed}}.log",
    benchmark:
        f"{BENCH}/{{dataset}}/{{encoder}}/lofi-{{cycle}}-seed{{seed}}.tsv"
    threads: THREADS
    resources:
        gpu=GPU,
    shell:
        "lofi stage lofi " + LOFI_ARGS + " --cycle {wildcards.cycle} --seed {wildcards.seed} "
        "--init $(dirname {input.acp})/encoder.pt --parent-run-id {params.parent} --out $(dirname {output}) "
        "> {log} 2>&1"


def features_input(wc):
    if wc.source.startswith("lofi-"):
        stage = f"lofi/{wc.source[len('lofi-'):]}"
    else:
        stage = f"pretrain/{wc.source}"
    return {"data": DATA_DONE, "encoder": f"{R}/{wc.dataset}/{wc.encoder}/{stage}/seed{wc.seed}/done.json"}


rule features:
    input:
        unpack(features_input),
    output:
        f"{BASE}/features/{{source}}/seed{{seed}}/done.json",
    params:
        hash=features_hash,
    log:
        f"{LOGS}/{{dataset}}/{{encoder}}/features-{{source}}-seed{{seed}}.log",
    benchmark:
        f"{BENCH}/{{dataset}}/{{encoder}}/features-{{source}}-seed{{seed}}.tsv"
    threads: THREADS
    resources:
        gpu=GPU,
    shell:
        "lofi stage features " + LOFI_ARGS + " --seed {wildcards.seed} --encoder $(dirname {input.encoder})/encoder.pt "
        "--out $(dirname {output}) > {log} 2>&1"


rule classifier:
    """Video-level class scores of every video from the ACP+ model, shared by every mode and head of a seed."""
    input:
        data=DATA_DONE,
        model=f"{BASE}/pretrain/acpplus/seed{{seed}}/done.json",
    output:
        f"{BASE}/classifier/seed{{seed}}/done.json",
    params:
        hash=lambda wc: _digest(_sections(PRETRAIN_SECTIONS, wc.encoder)),
    log:
        f"{LOGS}/{{dataset}}/{{encoder}}/classifier-seed{{seed}}.log",
    benchmark:
        f"{BENCH}/{{dataset}}/{{encoder}}/classifier-seed{{seed}}.tsv"
    threads: THREADS
    resources:
        gpu=GPU,
    shell:
        "lofi stage classifier " + LOFI_ARGS + " --seed {wildcards.seed} "
        "--checkpoint $(dirname {input.model})/encoder.pt --out $(dirname {output}) > {log} 2>&1"


def run_stage_dirs(wc):
    """The shared stage folders of a run: {name: folder} (lofi run's --NAME-dir flags)."""
    pre, cycle = MODE_PLAN[MODE_OF_SLUG[wc.mode]]
    base = f"{R}/{wc.dataset}/{wc.encoder}"
    source = f"lofi-{cycle}" if cycle else slug(pre)
    dirs = {"pretrain": f"{base}/pretrain/{slug(pre)}/seed{wc.seed}",
            "features": f"{base}/features/{source}/seed{wc.seed}"}
    if pre == "acp+" or CFG.head.class_scores == "finetuned":
        dirs["acp"] = f"{base}/pretrain/acp/seed{wc.seed}"
    if CFG.head.class_scores == "finetuned":  # the shared video-level classifier (ACP+ model) of this seed
        dirs["acpplus"] = f"{base}/pretrain/acpplus/seed{wc.seed}"
        dirs["classifier"] = f"{base}/classifier/seed{wc.seed}"
    if cycle:
        dirs["lofi"] = f"{base}/lofi/{cycle}/seed{wc.seed}"
    return dirs


rule run:
    input:
        lambda wc: [f"{d}/done.json" for d in run_stage_dirs(wc).values()],
        sweep=ancient(SWEEP_JSON),
    output:
        f"{BASE}/{{head}}/{{mode}}/seed{{seed}}/row.json",
    params:
        hash=run_hash,
        mode=lambda wc: MODE_OF_SLUG[wc.mode],
        dirs=lambda wc: " ".join(f"--{k}-dir {v}" for k, v in run_stage_dirs(wc).items()),
        parent=parent_run,
    log:
        f"{LOGS}/{{dataset}}/{{encoder}}/run-{{head}}-{{mode}}-seed{{seed}}.log",
    benchmark:
        f"{BENCH}/{{dataset}}/{{encoder}}/run-{{head}}-{{mode}}-seed{{seed}}.tsv"
    threads: THREADS
    resources:
        gpu=GPU,
    shell:
        "lofi run " + LOFI_ARGS + " --mode {params.mode:q} --seed {wildcards.seed} --head {wildcards.head} "
        "--out $(dirname {output}) {params.dirs} --parent-run-id {params.parent} > {log} 2>&1"


rule memory:
    """Activation memory of one LoFi training step (full, S, T, ST); --device meta allocates nothing."""
    output:
        f"{BASE}/memory.json",
    params:
        hash=lambda wc: _digest([wc.encoder, CFG.lofi.head, RESOLVED["fidelity"], RESOLVED["head"]]),
        head=CFG.lofi.head,
        fid=CFG.fidelity,
    log:
        f"{LOGS}/{{dataset}}/{{encoder}}/memory.log",
    benchmark:
        f"{BENCH}/{{dataset}}/{{encoder}}/memory.tsv"
    shell:
        "lofi bench memory --encoder {wildcards.encoder} --head {params.head} --snippets {params.fid.snippets} "
        "--size {params.fid.size} --frames {params.fid.frames} --batch 1 --device meta --config {CONFIG_FILE} "
        "--json > {output} 2> {log}"


def table_rule(kind):
    """One `lofi report tables --which KIND` over exactly the runs that table needs."""
    extra = [f"{R}/{DATASET}/{e}/memory.json" for e in ENCODERS[:1]] if kind == "memory" else []
    # Only the ablation report draws plots: every report names its plots by dataset/encoder/head, so a second
    # report over a different subset of modes would overwrite them.
    plots = "" if kind == "ablation" else "--no-plots"

    rule:
        name:
            f"table_{kind}"
        input:
            rows=TABLE_RUNS[kind],
            extra=extra,
        output:
            md=f"{R}/table_{kind}.md",
            csv=f"{R}/table_{kind}.csv",
            tex=f"{R}/table_{kind}.tex",
        params:
            hash=_digest([CFG.sweep.n_boot, GROUND_TRUTH]),
            n_boot=CFG.sweep.n_boot,
            plots=plots,
            kind=kind,
        log:
            f"{LOGS}/table_{kind}.log",
        benchmark:
            f"{BENCH}/table_{kind}.tsv"
        shell:
            "lofi report tables --runs {input.rows} --ground-truth {GROUND_TRUTH} --out {R} "
            "--n-boot {params.n_boot} --seed 0 --which {params.kind} {params.plots} > {log} 2>&1"


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
        hash=_digest([_sections(PRETRAIN_SECTIONS + ("lofi", "head", "post"), CFG.encoder.name),
                      RESOLVED["sweep"]["optuna"]]),
    log:
        f"{LOGS}/optuna.log",
    benchmark:
        f"{BENCH}/optuna.tsv"
    threads: THREADS
    resources:
        gpu=GPU,
    shell:
        "lofi search --config {CONFIG_FILE} --set runtime.threads={threads} --out {R}/optuna --report {output} "
        "> {log} 2>&1"
