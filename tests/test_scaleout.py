"""Scale-out on existing engines: Snakemake executor profiles, a shared MLflow tracking server, many Optuna workers
on one journal study, and the MLflow view of a sweep.

The SLURM profile is checked by a dry run with snakemake-executor-plugin-slurm installed (no cluster here): every
planned job must carry the resources its rule declares and start through the configured launcher. The parallel
tests start real processes: 8 writers through `lofi track server`, 4 `lofi search` workers on one journal file.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState, create_trial
from test_workflow import expected_ablation_jobs, job_counts

from harness.config import evolve
from harness.experiment import ExperimentConfig, TrackingConfig
from harness.search import study as S
from harness.search.storage import WORKER_ATTR, fail_dead_trials

ROOT = Path(__file__).resolve().parents[1]
WORKERS = Path(__file__).resolve().parent / "_scaleout_workers.py"
TORCHRUN = "torchrun --standalone --nproc_per_node {gpus} -m harness.cli"


# ------------------------------------------------------------------------------------------------- profiles
def _default_copy(tmp_path: Path, **sweep: object) -> Path:
    data = yaml.safe_load((ROOT / "config/default.yaml").read_text())
    data["sweep"].update({"results": str(tmp_path / "results"), **sweep})
    data["data"]["root"] = str(tmp_path / "data")
    path = tmp_path / "default.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _jobs(dry_run: str) -> list[dict[str, str]]:
    """The job blocks of a dry run: rule name, resources (name -> value), threads, shell command."""
    jobs = []
    # a job of a group (sweep.cluster_group) is printed indented under its group
    for block in re.split(r"\n(?= *(?:local)?rule \S+:\n)", dry_run)[1:]:
        name = re.match(r" *(?:local)?rule (\S+):", block).group(1)
        res = re.search(r"^\s+resources: (.*)$", block, re.M)
        threads = re.search(r"^\s+threads: (\d+)$", block, re.M)
        shell = re.search(r"^Shell command: (.*)$", block, re.M)
        jobs.append(
            {
                "rule": name,
                **dict(kv.split("=", 1) for kv in (res.group(1).split(", ") if res else [])),
                "threads": threads.group(1) if threads else "1",
                "shell": shell.group(1) if shell else "",
            }
        )
    return jobs


def test_slurm_profile_plans_the_sweep_with_every_jobs_resources(tmp_path: Path) -> None:
    pytest.importorskip("snakemake_executor_plugin_slurm")  # the `test` extra
    config = _default_copy(
        tmp_path, gpu_per_job=4, threads_per_job=8, mem_mb_per_job=32000, runtime_per_job=720, launcher=TORCHRUN
    )
    target = str(tmp_path / "results/table_ablation.md")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--nolock", "-d", str(tmp_path)]
    out = subprocess.run(
        [*cmd, "--profile", str(ROOT / "profiles/slurm"), "-n", target, "--configfile", str(config)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "profiles/slurm" in out.stderr  # the profile was read (its executor: slurm)
    assert job_counts(out.stdout) == expected_ablation_jobs(config)
    jobs = _jobs(out.stdout)
    assert len(jobs) == sum(expected_ablation_jobs(config).values())
    training = [j for j in jobs if j["rule"].startswith(("pretrain_", "lofi_", "features_", "classifier_", "run_"))]
    frames = [j for j in jobs if j["rule"] == "frames"]  # decoding the videos: a job of its own, no GPU
    assert len(frames) == 1 and (frames[0]["mem_mb"], frames[0]["runtime"]) == ("32000", "720")
    assert "gpu" not in frames[0]
    light = [j for j in jobs if j not in training + frames]
    assert training and {j["rule"] for j in light} == {"data", "track_init", "table_ablation"}
    for j in training:  # what sbatch is asked for: --gpus 4, --cpus-per-task 8, --mem 32000, -t 720
        assert (j["gpu"], j["threads"], j["mem_mb"], j["runtime"]) == ("4", "8", "32000", "720"), j
        assert j["shell"].startswith("torchrun --standalone --nproc_per_node 4 -m harness.cli "), j["shell"]
    for j in light:
        assert (j["mem_mb"], j["runtime"]) == ("2000", "30") and "gpu" not in j, j


def test_local_profile_keeps_plain_lofi_and_one_gpu_job_at_a_time(tmp_path: Path) -> None:
    config = _default_copy(tmp_path, gpu_per_job=1)
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--nolock", "-d", str(tmp_path)]
        + ["--profile", str(ROOT / "profiles/local"), "-n", str(tmp_path / "results/table_ablation.md")]
        + ["--configfile", str(config)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = _jobs(out.stdout)
    shells = [j["shell"] for j in jobs if j["rule"].startswith(("pretrain_", "lofi_", "run_"))]
    assert shells and all(s.startswith(("lofi stage ", "lofi run ")) for s in shells)
    assert yaml.safe_load((ROOT / "profiles/local/config.yaml").read_text())["resources"] == ["gpu=1"]


def test_a_launcher_that_is_no_template_is_a_one_line_error() -> None:
    from harness.errors import ConfigError
    from harness.experiment import load_experiment

    with pytest.raises(ConfigError, match=r"sweep\.launcher .*\{gpus\}") as info:
        load_experiment(ROOT / "config/smoke.yaml", ["sweep.launcher=torchrun --nproc_per_node {gpu}"])
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------------- MLflow
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, f"server exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"no MLflow server at {url} after {timeout} s")


@pytest.fixture
def tracking_server(tmp_path: Path):
    """`lofi track server` on a free localhost port (its own process group, stopped at the end)."""
    port = _free_port()
    log = (tmp_path / "server.log").open("w")
    cmd = [sys.executable, "-m", "harness.cli", "track", "server", "--port", str(port)]
    cmd += ["--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    cmd += ["--artifacts-destination", str(tmp_path / "artifacts")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_eight_writers_log_through_the_tracking_server(tracking_server: str, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    t0 = time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKERS), "track", tracking_server, str(k)],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(8)
    ]
    results = [(p.wait(timeout=240), *p.communicate()) for p in procs]
    elapsed = time.monotonic() - t0
    errors = [err for rc, _, err in results if rc != 0 or re.search(r"Traceback|Error|locked", err)]
    assert not errors, errors[0][-2000:]
    client = MlflowClient(tracking_uri=tracking_server)
    exp = client.get_experiment_by_name("parallel-writers")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert len(runs) == 24 and {r.info.status for r in runs} == {"FINISHED"}
    assert sorted(r.data.metrics["final"] for r in runs) == sorted(10 * k + i for k in range(8) for i in range(3))
    curve = client.get_metric_history(runs[0].info.run_id, "loss")
    assert [m.step for m in curve] == list(range(5)) and curve[-1].value == pytest.approx(0.2)
    # concurrent first use created one experiment (the losers of the race read the winner's), of model training
    assert [e.name for e in client.search_experiments()].count("parallel-writers") == 1
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    print(f"8 writers x 3 runs through the server: {elapsed:.1f} s")


def test_track_server_binds_localhost_unless_told(tmp_path: Path) -> None:
    def cmd(*extra: str) -> list[str]:
        out = subprocess.run(
            [sys.executable, "-m", "harness.cli", "track", "server", "--print-only", *extra],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    default = cmd("--config", str(ROOT / "config/smoke.yaml"))
    assert default[default.index("--host") + 1] == "127.0.0.1"
    assert default[default.index("--backend-store-uri") + 1] == "sqlite:///results/smoke/mlflow.db"
    assert default[default.index("--workers") + 1] == "1"  # the SQLite file's only writer
    wide = cmd("--host", "0.0.0.0", "--backend-store-uri", "postgresql://u@db/mlflow", "--allowed-hosts", "login1")
    assert wide[wide.index("--host") + 1] == "0.0.0.0" and wide[wide.index("--workers") + 1] == "4"
    assert wide[wide.index("--allowed-hosts") + 1] == "login1"
    bad = subprocess.run(
        [sys.executable, "-m", "harness.cli", "track", "server", "--backend-store-uri", "mlflow.db"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--backend-store-uri" in bad.stderr


def test_experiment_opens_as_model_training_with_the_compare_view(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from harness.tracking import COMPARE_VIEW, compare_view_state, configuration_tags, prepare_experiment, start_run

    cfg = TrackingConfig(uri=f"sqlite:///{tmp_path / 'm.db'}", experiment="sweep")
    row = {"mode": "lofi-long", "seed": 1, "fidelities": "S,T", "r_t": None, "L": 64, "average_mAP": 0.3}
    with start_run(cfg, run_name="config", tags={"mode": "lofi-long"}) as run:
        run.set_tags(configuration_tags(row))
    exp_id = prepare_experiment(cfg)
    client = MlflowClient(tracking_uri=cfg.uri)
    tags = client.get_experiment(exp_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(tags[f"mlflow.sharedViewState.{COMPARE_VIEW}"])
    assert view == compare_view_state() and view["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "mode"}]
    assert f"viewStateShareKey={COMPARE_VIEW}" in tags["mlflow.note.content"]
    # the view's filter finds exactly the configuration runs, and its columns are their tags
    found = client.search_runs([exp_id], filter_string=view["searchFilter"])
    assert [r.info.run_id for r in found] == [run.run_id]
    assert {k: found[0].data.tags[k] for k in ("mode", "seed", "fidelities", "r_t", "L")} == {
        "mode": "lofi-long",
        "seed": "1",
        "fidelities": "S,T",
        "r_t": "",
        "L": "64",
    }


# ------------------------------------------------------------------------------------------------- Optuna
def _cfg() -> ExperimentConfig:
    base = ExperimentConfig(tracking=TrackingConfig(enabled=False))
    return evolve(base, sweep={"optuna": {"trials": 4, "fresh_seeds": (100,)}})


def _trial(number: int, state: TrialState) -> optuna.trial.FrozenTrial:
    t = create_trial(state=state, values=None if state != TrialState.COMPLETE else [0.0])
    t.number = number
    return t


def test_a_trial_runs_only_while_fewer_trials_before_it_hold_the_budget() -> None:
    C, R, F = TrialState.COMPLETE, TrialState.RUNNING, TrialState.FAIL
    trials = [_trial(0, C), _trial(1, R), _trial(2, F), _trial(3, C), _trial(4, R)]
    # before trial 4: 0 (done), 1 (running), 3 (done) hold slots; 2 failed without a user error and frees its slot
    assert S.admitted(trials, 4, 4) and not S.admitted(trials, 4, 3)
    assert S.admitted(trials, 5, 5) and not S.admitted(trials, 5, 4)  # trial 4, still running, now holds one too


def test_a_dead_workers_trial_is_failed_and_its_slot_refilled(tmp_path: Path) -> None:
    S.run_study(_cfg(), tmp_path, 2, objective_fn=_cheap)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    storage = S.open_storage(S.default_storage(tmp_path), heartbeat_interval=60, grace_period=3600)
    study = optuna.load_study(study_name=S.study_name(_cfg(), False), storage=storage)
    killed = study.ask()  # what a killed worker leaves behind: RUNNING, its process gone
    killed.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{int(gone.stdout)}")
    alive = study.ask()  # a live worker's trial (this process) is left alone
    alive.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{os.getpid()}")
    assert fail_dead_trials(study, grace_period=3600) == [killed.number]
    study.tell(alive, state=TrialState.FAIL)
    result = S.run_study(_cfg(), tmp_path, 4, objective_fn=_cheap)
    states = {t.number: t.state for t in result.study.get_trials()}
    assert states[killed.number] == TrialState.FAIL and (result.counted, result.ran, len(states)) == (4, 2, 6)


def _cheap(cfg, spec, on_epoch):
    val = 0.5 - 0.01 * (cfg.lofi.r_t - 3.0) ** 2 - 0.05 * (cfg.lofi.r_s - 2.0) ** 2
    return {"val_average_mAP": val, "average_mAP": val, "activation_rel": 1.0 / (cfg.lofi.r_t * cfg.lofi.r_s**2)}


def test_four_search_workers_finish_exactly_the_requested_trials(tmp_path: Path) -> None:
    n = 10
    args = ["--config", str(ROOT / "config/smoke.yaml"), "--set", "tracking.enabled=false"]
    args += ["--out", str(tmp_path / "search"), "--trials", str(n), "--no-report"]
    t0 = time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKERS), "search", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(4)
    ]
    outs = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    elapsed = time.monotonic() - t0
    for rc, _, err in outs:
        assert rc == 0 and not re.search(rb"Traceback|[Ll]ock", err), err.decode()[-2000:]
    ran = [json.loads(out.decode().strip().splitlines()[-1])["ran"] for _, out, _ in outs]
    journal = tmp_path / "search" / "optuna.journal"
    assert json.loads(outs[0][1].decode().strip().splitlines()[-1])["storage"] == str(journal.resolve())
    storage = S.open_storage(str(journal), heartbeat_interval=60, grace_period=180)
    (summary,) = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    surplus = [t for t in trials if t.user_attrs.get(S.SURPLUS_ATTR)]
    assert len(done) == n and sum(ran) == n  # exactly the budget, each trial run by one worker
    assert len({t.number for t in done}) == n and len({(t.params["r_t"], t.params["r_s"]) for t in done}) == n
    assert all(t.state == TrialState.FAIL and not t.params for t in surplus)  # a lost race: no work, not counted
    assert len(trials) == n + len(surplus)
    print(f"4 workers, {n} trials: {elapsed:.1f} s, trials per worker {ran}, surplus {len(surplus)}")
