"""Fidelity schedules: hand-worked cycles and the CLI's JSON."""

import json
import math

import pytest

from harness.cli import main
from harness.errors import ConfigError
from harness.schedule import fidelity_at, schedule_table


def names(table):
    return [f.name for f in table]


def test_long_cycle_switches_every_c_l_epochs():
    assert names(schedule_table("long", epochs=7)) == ["S", "T", "ST", "S", "T", "ST", "S"]
    assert names(schedule_table("long", epochs=6, c_l=2)) == ["S", "S", "T", "T", "ST", "ST"]


def test_short_cycle_switches_every_c_s_iterations_across_epochs():
    table = schedule_table("short", epochs=2, iterations_per_epoch=5, c_s=3)
    # iterations 0-2 S, 3-5 T, 6-8 ST, 9 S: the cycle runs on across the epoch boundary
    assert names(table) == ["S", "S", "S", "T", "T", "T", "ST", "ST", "ST", "S"]


def test_paper_ratios_and_fixed_schedules():
    s, t, st = (fidelity_at(n, epoch=0, iteration=0) for n in ("S", "T", "ST"))
    assert (s.r_t, s.r_s) == (1.0, 2.0)
    assert (t.r_t, t.r_s) == (4.0, 1.0)
    assert st.r_t == 2.0 and st.r_s == pytest.approx(math.sqrt(2))
    assert names(schedule_table("T", epochs=3)) == ["T", "T", "T"]
    full = fidelity_at("full", epoch=5, iteration=99)
    assert (full.r_t, full.r_s) == (1.0, 1.0)
    custom = fidelity_at("custom", epoch=0, iteration=0, custom=(3.5, 1.25))
    assert (custom.r_t, custom.r_s) == (3.5, 1.25)


def test_bad_schedule_arguments_are_one_line_errors():
    with pytest.raises(ConfigError, match="unknown cycle 'medium'"):
        fidelity_at("medium", epoch=0, iteration=0)
    with pytest.raises(ConfigError, match="c_s=0"):
        fidelity_at("short", epoch=0, iteration=0, c_s=0)


def test_cli_json(capsys):
    assert main(["schedule", "--cycle", "long", "--epochs", "4", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["S", "T", "ST", "S"]
    assert rows[2]["r_t"] == 2.0 and rows[2]["r_s"] == pytest.approx(math.sqrt(2))
    assert main(["schedule", "--cycle", "short", "--epochs", "1", "--iterations-per-epoch", "40", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 40 and rows[15]["name"] == "S" and rows[16]["name"] == "T" and rows[32]["name"] == "ST"
