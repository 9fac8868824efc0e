"""Every shell command in README.md and docs/*.md, run as written (issue 20).

The fenced ``bash`` blocks are read from the files. A document is a walk-through: its commands run in order in one
fresh copy of the checkout (a file or a variable a command makes, e.g. docs/cluster.md's ``cluster.yaml`` and
``P``, is there for the next ones). How each command is treated is decided by ``HOW`` below, one entry per command
pattern, and nothing else:

- ``run``: the command exactly as written;
- ``dry``: the command exactly as written plus, at its end, a flag that plans without doing (``-n`` for snakemake,
  ``--print-only`` for ``lofi track server``): the argument order a user types, so a target swallowed by a
  multi-value option fails here as it fails for the user;
- ``placeholder``: the command with its placeholder path replaced by the real file (ActivityNet's annotation file
  from the shared data, as tests/test_real_data.py);
- ``skip``: not run, with the reason (an install, an interactive tool, data or hardware this machine does not
  have) and, where there is one, the test that covers the same step.

A documented command no entry matches fails (a new command must be classified), and so does an entry that matches
no command (a stale one). Without the shared annotation file the commands that plan on it are skipped.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ANET = Path("/work/shared/data/activitynet/activity_net_v1-3_gt.json")
if (ROOT.parent / "shared/data/activitynet/activity_net_v1-3_gt.json").is_file():
    ANET = ROOT.parent / "shared/data/activitynet/activity_net_v1-3_gt.json"

REAL_DATA = (
    "needs ActivityNet's videos and the Kinetics-400 checkpoint, which are not in the repository; "
    "tests/test_real_data.py follows these steps on the official annotation file with stand-in videos and weights"
)
# (pattern matched against the whole command, how, why) -- the first entry that matches decides
HOW: list[tuple[str, str, str]] = [
    (r"python -m pip install -e \.", "skip", "installs into this environment; scripts/test.sh (CI) installs it"),
    (r"pip install -e '\.\[cluster,test\]'", "skip", "installs into this environment; scripts/test.sh installs it"),
    (r"bash scripts/test\.sh", "skip", "the test suite itself (CI runs it through .ci/run)"),
    (r"pytest -q tests/test_scaleout\.py", "skip", "part of the test suite"),
    (r"cd /project/\$USER && .*", "skip", "a placeholder path and repository URL"),
    (r"python -m venv \.venv", "skip", "the tests run in the installed environment"),
    (r"\. \.venv/bin/activate", "skip", "the tests run in the installed environment"),
    (r"tmux new -s \w+", "skip", "an interactive terminal multiplexer"),
    (r"cp /path/to/activity_net_v1-3_gt\.json data/activitynet/", "placeholder", "the official annotation file"),
    (r"squeue -u \$USER", "skip", "needs the cluster: tests/test_slurm.py runs jobs on a one-node SLURM"),
    (r"torchrun --standalone --nproc_per_node 4 .*", "skip", "4 GPUs; tests/test_distributed.py runs 2 processes"),
    (r"mlflow ui --backend-store-uri \S+", "skip", "a server that runs until stopped; tests/test_scaleout.py runs one"),
    (
        r"lofi run --config config/default\.yaml .*",
        "skip",
        "a default-benchmark run takes CPU-hours; the same command on config/smoke.yaml runs above",
    ),
    (
        r"lofi search --config config/default\.yaml .*",
        "skip",
        "12 trials of the default benchmark take CPU-hours; tests/test_search.py runs the search at toy size",
    ),
    (
        r"lofi (config check|data prepare|run|report tables) .*activitynet.*|lofi report tables --runs runs/anet.*",
        "skip",
        REAL_DATA,
    ),
    (
        r"snakemake \S+ --report \S+|python scripts/check_report\.py .*",
        "skip",
        "needs a finished sweep: tests/test_workflow.py's smoke end-to-end test builds and checks its report",
    ),
    (r"lofi track server .*", "dry", "a server: --print-only prints the mlflow command it would start"),
    (r"snakemake .*", "dry", "the whole sweep takes hours: its plan"),
    (r"lofi .*|mkdir -p .*|cat > cluster\.yaml <<'EOF'\n.*|P=\".*\"", "run", "quick"),
]
DRY_FLAG = {"snakemake": "-n", "lofi": "--print-only"}


@dataclass(frozen=True)
class Command:
    doc: str
    line: int
    text: str

    def how(self) -> tuple[int, str, str]:
        for i, (pattern, how, why) in enumerate(HOW):
            if re.fullmatch(pattern, self.text, re.S):
                return i, how, why
        raise AssertionError(f"{self.doc}:{self.line}: no entry in HOW (tests/test_docs.py) for: {self.text}")


def _strip_comment(line: str) -> str:
    """A shell line without its trailing `# comment` (a `#` outside quotes, after a blank)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def commands(path: Path) -> list[list[Command]]:
    """The fenced bash blocks of a Markdown file, each a list of commands: comments dropped, a heredoc kept with
    its command, a `&&` chain split into its commands (each is classified on its own)."""
    doc = str(path.relative_to(ROOT))
    text = path.read_text(encoding="utf-8")
    blocks = []
    for m in re.finditer(r"^```bash\n(.*?)^```", text, re.S | re.M):
        first = text[: m.start(1)].count("\n") + 1
        lines = m.group(1).splitlines()
        cmds: list[Command] = []
        i = 0
        while i < len(lines):
            line = _strip_comment(lines[i])
            start = i
            i += 1
            if not line:
                continue
            heredoc = re.search(r"<<'?(\w+)'?$", line)
            if heredoc:
                end = lines.index(heredoc.group(1), i)
                line = "\n".join([line, *lines[i : end + 1]])
                i = end + 1
            parts = [line] if heredoc or line.startswith("cd /project") else line.split(" && ")
            cmds.extend(Command(doc, first + start, p.strip()) for p in parts)
        blocks.append(cmds)
    return blocks


DOC_COMMANDS = {path: [cmd for block in commands(path) for cmd in block] for path in DOCS}


def test_every_documented_command_has_one_way_to_be_checked() -> None:
    used = {cmd.how()[0] for cmds in DOC_COMMANDS.values() for cmd in cmds}  # raises for a command with no entry
    stale = [HOW[i][0] for i in range(len(HOW)) if i not in used]
    assert not stale, f"entries of HOW that match no documented command (remove them): {stale}"
    checked = [cmd for cmds in DOC_COMMANDS.values() for cmd in cmds if cmd.how()[1] != "skip"]
    assert any(c.text.startswith("snakemake") and "profiles/slurm" in c.text for c in checked) or any(
        "$P" in c.text for c in checked
    ), "the cluster commands are not among the checked ones"


def _scratch_copy(dest: Path) -> Path:
    """The checkout's files as a clone has them (tracked, plus new files git does not ignore)."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, text=True
    )
    if listed.returncode != 0:
        pytest.skip("not a git checkout: the documented commands run in a copy of its tracked files")
    for name in filter(None, listed.stdout.split("\0")):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def _shell_line(cmd: Command, uses_anet: bool) -> str | None:
    """What the shell runs for a documented command; None for one that is not run (never handed to the shell)."""
    _, how, _ = cmd.how()
    if how == "skip" or (uses_anet and not ANET.is_file()):
        return None
    if how == "dry":
        return f"{cmd.text} {DRY_FLAG[cmd.text.split()[0]]}"
    if how == "placeholder":
        return cmd.text.replace("/path/to/", f"{ANET.parent}/")
    return cmd.text


@pytest.mark.slow
@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_documented_commands_run_as_written(path: Path, tmp_path: Path) -> None:
    cmds = DOC_COMMANDS[path]
    if all(cmd.how()[1] == "skip" for cmd in cmds):
        pytest.skip(f"{path.name} has no command that can run here" if cmds else f"{path.name} has no commands")
    work = _scratch_copy(tmp_path / "checkout")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.setdefault("USER", "tester")
    prefix = ""  # the variables earlier commands set, replayed before each command
    ran = 0
    for cmd in cmds:
        line = _shell_line(cmd, uses_anet="activitynet" in cmd.text or "$P" in cmd.text)
        if line is None:
            continue
        done = subprocess.run(
            ["bash", "-c", f"set -eo pipefail\n{prefix}{line}"], cwd=work, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0 and "Traceback" not in done.stderr, (
            f"{cmd.doc}:{cmd.line}: `{line}` exited {done.returncode}:\n{done.stderr[-3000:]}"
        )
        ran += 1
        if re.fullmatch(r"\w+=\".*\"", cmd.text):
            prefix += cmd.text + "\n"
    assert ran, f"no command of {path.name} ran"
