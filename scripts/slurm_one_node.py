#!/usr/bin/env python
"""A one-node SLURM cluster on this machine, from the distribution's packages (Debian: slurmctld, slurmd, munge).

Everything lives in one folder: its own munge key and socket, ``slurm.conf`` (no accounting database: the executor
plugin polls with ``squeue``, and finished jobs stay visible for ``MinJobAge`` seconds), state, spool, logs and pid
files, and free ports; nothing outside it is touched, so two clusters can run side by side. ``SLURM_CONF`` in the
returned environment points the clients (``sbatch``, ``squeue``) at it, and ``PATH`` starts with the folder's
``bin/``, whose ``srun`` sets ``SLURM_CONF`` again before running the real one: snakemake-executor-plugin-slurm-jobstep
(0.6) drops every ``SLURM_*`` variable but the job's ids from the environment of the ``srun`` it starts inside a
job, and without it ``srun`` looks for ``/etc/slurm/slurm.conf``. Every daemon started here is stopped by its pid.

    with one_node_cluster(tmp_path / "slurm") as env:
        subprocess.run(["sbatch", "--wrap", "hostname"], env=env)

or from the shell, a command run while the cluster is up (its exit status is the script's):

    python scripts/slurm_one_node.py --dir /tmp/slurm -- snakemake results/smoke/table_ablation.md \
        --profile profiles/slurm --configfile config/smoke.yaml --cores 2 --slurm-status-command squeue

Used by tests/test_slurm.py and benchmarks/slurm_vs_local.py. ``ensure_installed`` installs the packages with
apt-get when they are missing (root only); ``why_not`` says in one line why a cluster cannot start here.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "srun", "sinfo")
PARTITION = "debug"


def _missing() -> list[str]:
    return [d for d in DAEMONS if shutil.which(d) is None and not Path(f"/usr/sbin/{d}").exists()]


def ensure_installed() -> str | None:
    """Install the SLURM and munge packages if missing; None when ready, else why not (one line)."""
    if not _missing():
        return None
    if os.geteuid() != 0:
        return f"SLURM is not installed ({', '.join(_missing())} missing) and installing it needs root"
    if shutil.which("apt-get") is None:
        return "SLURM is not installed and there is no apt-get to install it (a Debian/Ubuntu machine is needed)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:  # the package lists may be stale or absent: update once, then retry
        subprocess.run(["apt-get", "update"], capture_output=True, text=True, env=env)
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return f"apt-get install {' '.join(PACKAGES)} failed (packages unreachable?): {last}"
    return None if not _missing() else f"installed, but {', '.join(_missing())} still missing"


def why_not() -> str | None:
    """Why a one-node cluster cannot start here (None: it can). Installs the packages when root."""
    if os.geteuid() != 0:
        return "a one-node SLURM needs root (slurmd starts jobs as their user)"
    return ensure_installed()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 4000


def write_config(root: Path, min_job_age: int = 300) -> Path:
    """slurm.conf for one node (this machine, all its CPUs and memory) and one partition."""
    host = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    lines = {
        "ClusterName": "lofi",
        "SlurmctldHost": host,
        "SlurmUser": "root",
        "SlurmdUser": "root",
        "SlurmctldPort": _free_port(),
        "SlurmdPort": _free_port(),
        "AuthType": "auth/munge",
        "CredType": "cred/munge",
        "AuthInfo": f"socket={root / 'munge.socket'}",
        "StateSaveLocation": root / "state",
        "SlurmdSpoolDir": root / "spool",
        "SlurmctldPidFile": root / "slurmctld.pid",
        "SlurmdPidFile": root / "slurmd.pid",
        "SlurmctldLogFile": root / "slurmctld.log",
        "SlurmdLogFile": root / "slurmd.log",
        "ProctrackType": "proctrack/linuxproc",  # no cgroups: the machine may be a container
        "TaskPlugin": "task/none",
        "SelectType": "select/cons_tres",
        "SelectTypeParameters": "CR_CPU",  # CPUs are the consumable; a job's --mem is checked against the node
        "MpiDefault": "none",
        "ReturnToService": 2,
        "SchedulerType": "sched/backfill",
        "SchedulerParameters": "sched_interval=1",  # plan a submitted job within a second (default 60)
        "JobAcctGatherType": "jobacct_gather/none",
        "AccountingStorageType": "accounting_storage/none",
        "MinJobAge": min_job_age,  # finished jobs stay in squeue's view: the plugin reads their state there
        "SlurmdTimeout": 300,
        "InactiveLimit": 0,
        "KillWait": 5,
    }
    text = "".join(f"{k}={v}\n" for k, v in lines.items())
    text += f"NodeName={host} CPUs={os.cpu_count() or 1} RealMemory={_memory_mb()} State=UNKNOWN\n"
    text += f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n"
    for d in ("state", "spool"):
        (root / d).mkdir(parents=True, exist_ok=True)
    conf.write_text(text)
    return conf


def _start(cmd: list[str], env: dict[str, str], pid_file: Path, what: str, timeout: float = 30) -> int:
    """Start a daemon that forks to the background and writes its pid file; its pid."""
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{what} did not start (exit {out.returncode}): {out.stderr.strip()[-500:]}")
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pid_file.is_file() and pid_file.read_text().strip():
            return int(pid_file.read_text().split()[0])
        time.sleep(0.1)
    raise RuntimeError(f"{what} wrote no pid file {pid_file} within {timeout:.0f} s")


def _stop(pid: int, what: str) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    end = time.monotonic() + 15
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    log.warning("%s (pid %d) ignored SIGTERM for 15 s: killed", what, pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _wait_idle_node(env: dict[str, str], root: Path, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    state = ""
    while time.monotonic() < end:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=env)
        state = out.stdout.strip()
        if out.returncode == 0 and state.startswith("idle"):
            return
        time.sleep(0.3)
    raise RuntimeError(f"the node is not idle after {timeout:.0f} s (sinfo: {state!r}); see {root}/slurmd.log")


@contextlib.contextmanager
def one_node_cluster(root: Path, min_job_age: int = 300) -> Iterator[dict[str, str]]:
    """Start munged, slurmctld and slurmd in ``root``; yield the environment its clients need; stop them."""
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    conf = write_config(root, min_job_age)
    bin_dir = root / "bin"
    bin_dir.mkdir(exist_ok=True)
    srun = bin_dir / "srun"  # the config for the srun a job's Snakemake starts (see the module's docstring)
    srun.write_text(f'#!/bin/sh\nSLURM_CONF="{conf}" exec {shutil.which("srun")} "$@"\n')
    srun.chmod(0o755)
    env = {**os.environ, "SLURM_CONF": str(conf), "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}
    key = root / "munge.key"
    key.write_bytes(os.urandom(128))
    key.chmod(0o600)
    pids: list[tuple[int, str]] = []
    try:
        munged = ["munged", "--force", f"--key-file={key}", f"--socket={root / 'munge.socket'}"]
        munged += [f"--pid-file={root / 'munged.pid'}", f"--log-file={root / 'munged.log'}"]
        munged += [f"--seed-file={root / 'munged.seed'}"]
        pids.append((_start(munged, env, root / "munged.pid", "munged"), "munged"))
        pids.append((_start(["slurmctld", "-f", str(conf)], env, root / "slurmctld.pid", "slurmctld"), "slurmctld"))
        pids.append((_start(["slurmd", "-f", str(conf)], env, root / "slurmd.pid", "slurmd"), "slurmd"))
        _wait_idle_node(env, root)
        yield env
    finally:
        for pid, what in reversed(pids):
            _stop(pid, what)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=None, help="the cluster's folder (default: a new temporary one)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run on the cluster")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    problem = why_not()
    if problem:
        log.error("no one-node SLURM here: %s", problem)
        return 2
    root = args.dir or Path(tempfile.mkdtemp(prefix="slurm-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout`, `kill`: still stop the daemons
    try:
        with one_node_cluster(root) as env:
            log.info("one-node SLURM up in %s (SLURM_CONF=%s)", root, env["SLURM_CONF"])
            return subprocess.run(command, env=env).returncode
    except RuntimeError as exc:
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
