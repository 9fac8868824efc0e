"""harness.report.tables / plots / `lofi report tables` on TEST FIXTURES: made-up row.json, predictions.json and
annotations.json files written into tmp_path. None of these numbers is a measured result."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.cli import main
from harness.experiment import SweepConfig
from harness.modes import MODES
from harness.report.build import build_report, table_modes
from harness.report.notes import mde_note
from harness.report.paper_results import PUBLISHED, canonical_dataset, published
from harness.report.rows import MODE_LABELS, TableError, load_rows
from harness.report.stats import Comparison, RatioResult, minimum_detectable_effect
from harness.report.tables import NO_GAIN, SHARE_COLUMN, ablation_table, memory_table, models_table, pretrain_table
from harness.report.writers import to_latex, to_markdown, write_tables

ROOT = Path(__file__).resolve().parents[1]
ABLATION, PRETRAIN = SweepConfig().ablation_modes, SweepConfig().pretrain_modes  # the config's default rows

CLASSES = ("jump", "run")
N_VIDEOS = 10
# Fixture average mAP per mode and seed (fractions, as rows store them).
FIXTURE_AVG = {
    "acp": (0.30, 0.32),
    "lofi-S": (0.33, 0.35),
    "lofi-T": (0.31, 0.33),
    "lofi-ST": (0.34, 0.34),
    "lofi-short": (0.35, 0.37),
    "lofi-long": (0.36, 0.38),
    "icp": (0.25, 0.27),
    "acp+": (0.31, 0.31),
}
FIXTURE_SHAPE = {
    "lofi-S": (100, 112, 0.25),
    "lofi-T": (25, 224, 0.25),
    "lofi-ST": (50, 158, 0.25),
    "e2e-full": (100, 224, 1.0),
}
NOISE = {
    "icp": 8.0,
    "acp": 6.0,
    "acp+": 5.0,
    "lofi-S": 4.0,
    "lofi-T": 4.0,
    "lofi-ST": 4.0,
    "lofi-short": 2.0,
    "lofi-long": 1.0,
    "e2e-full": 1.0,
}
EXTRA_AVG = {"e2e-full": (0.40, 0.42)}  # modes written only by the tests that need them (not by the fixture)


def _write_annotations(path: Path) -> dict:
    rng = np.random.default_rng(0)
    db = {}
    for i in range(N_VIDEOS):
        start = float(rng.uniform(0, 50))
        db[f"vid{i:02d}"] = {
            "subset": "validation",
            "duration": 100.0,
            "annotations": [{"segment": [start, start + 20.0], "label": CLASSES[i % 2]}],
        }
    path.write_text(json.dumps({"version": "fixture", "database": db}))
    return db


def _write_run(
    root: Path, dataset: str, mode: str, seed: int, db: dict, gt: Path, encoder: str = "tsm_resnet18"
) -> Path:
    run = root / dataset / encoder / mode / f"seed{seed}"
    run.mkdir(parents=True)
    rng = np.random.default_rng([seed, len(mode)])
    results = {}
    for vid, info in db.items():
        (s, e), label = info["annotations"][0]["segment"], info["annotations"][0]["label"]
        jitter = rng.normal(0, NOISE[mode], 2)
        results[vid] = [
            {"label": label, "score": float(rng.uniform(0.5, 1)), "segment": [s + jitter[0], e + abs(jitter[1]) + 1]},
            {"label": CLASSES[int(rng.integers(2))], "score": float(rng.uniform(0, 0.5)), "segment": [1.0, 9.0]},
        ]
    (run / "predictions.json").write_text(json.dumps({"version": "fixture", "results": results}))
    avg = {**FIXTURE_AVG, **EXTRA_AVG}[mode][seed]
    L, size, rel = FIXTURE_SHAPE.get(mode, (None, None, 0.3 if mode in ("lofi-long", "lofi-short") else 0.0))
    cycle = {
        "lofi-S": "S",
        "lofi-T": "T",
        "lofi-ST": "ST",
        "lofi-long": "long",
        "lofi-short": "short",
        "e2e-full": "full",
    }.get(mode, "")
    row = {
        "dataset": dataset,
        "encoder": encoder,
        "head": "gtad",
        "mode": mode,
        "cycle": cycle,
        "r_t": None,
        "r_s": None,
        "L": L,
        "size": size,
        "full_L": 100,
        "full_size": 224,
        "seed": seed,
        "split": "validation",
        "config_hash": f"hash-{mode}-{seed}",
        "commit": "fixturecommit",
        "mlflow_run_id": f"mlflow-{mode}-{seed}",
        "average_mAP": avg,
        **{f"mAP_{t:.2f}": avg + 0.2 - 0.4 * (t - 0.5) / 0.45 for t in np.linspace(0.5, 0.95, 10)},
        "activation_bytes": int(rel * 2**30),
        "activation_bytes_full": 2**30,
        "time_lofi_s": 10.0 + seed,
        "predictions": "predictions.json",
        "ground_truth": str(gt),
    }
    (run / "row.json").write_text(json.dumps(row))
    return run


@pytest.fixture(scope="module")
def fixture_runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    gt = root / "annotations.json"
    db = _write_annotations(gt)
    for dataset in ("synthetic", "activitynet"):
        for mode in FIXTURE_AVG:
            for seed in (0, 1):
                _write_run(root, dataset, mode, seed, db, gt)
    for mode in ("acp", "lofi-long"):  # a second encoder for the models table
        for seed in (0, 1):
            _write_run(root, "activitynet", mode, seed, db, gt, encoder="tsm_resnet34")
    return root


def _rows(root: Path, dataset: str, encoder: str = "tsm_resnet18") -> pd.DataFrame:
    rows = load_rows(sorted(root.glob(f"{dataset}/**/row.json")))
    return rows[rows["encoder"] == encoder]


def _markdown_table(text: str) -> list[list[str]]:
    """Cells of the first pipe table in ``text`` (separator line dropped)."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    cells = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
    return [cells[0]] + [c for c in cells[2:]] if cells else []


# ---------------------------------------------------------------------------------------------------------------


def test_ablation_table_rows_columns_and_values(fixture_runs: Path) -> None:
    table = ablation_table(_rows(fixture_runs, "synthetic"), modes=ABLATION)
    assert list(table.display["Config"]) == ["ACP", "S-LoFi", "T-LoFi", "ST-LoFi", "Short C-LoFi", "Long C-LoFi"]
    for col in ("L", "H×W", "mAP@0.5", "mAP@0.75", "mAP@0.95", "Avg", "Act. mem. (rel.)", "Δ Avg [95% CI]", "p (Holm)"):
        assert col in table.display.columns
    acp = table.display.set_index("Config").loc["ACP"]
    assert acp["Avg"] == "31.00 ± 1.41"  # (30 + 32) / 2, sd = sqrt(2) with ddof=1
    s = table.display.set_index("Config").loc["S-LoFi"]
    assert (s["L"], s["H×W"], s["Act. mem. (rel.)"]) == ("100", "112²", "0.25")
    # every mode's fidelity is filled: a cycle as the range of its fidelities, ACP at full fidelity (its features)
    shown = table.display.set_index("Config")
    assert shown.loc["Long C-LoFi", ["L", "H×W"]].tolist() == ["25–100", "112²–224²"]
    assert shown.loc["ACP", ["L", "H×W"]].tolist() == ["100", "224²"]


def test_outputs_parse_and_round_trip(fixture_runs: Path, tmp_path: Path) -> None:
    table = ablation_table(_rows(fixture_runs, "synthetic"), modes=ABLATION)
    md, csv, tex, page = write_tables([table], tmp_path, "table_ablation")
    cells = _markdown_table(md.read_text())
    assert cells[0][:2] == ["Config", "L"] and len(cells) == 7
    assert all(len(r) == len(cells[0]) for r in cells)
    pd.testing.assert_frame_equal(pd.read_csv(csv), table.numeric, check_dtype=False)
    latex = tex.read_text()
    assert latex.index(r"\toprule") < latex.index(r"\midrule") < latex.index(r"\bottomrule")
    assert r"$\pm$" in latex and "fixturecommit" in latex
    shown = page.read_text()  # the page `snakemake --report` shows: the same cells, escaped, and the footnotes
    assert shown.count("<tr>") == len(cells) and re.search(r"<th>\s*Config\s*</th>", shown) and "fixturecommit" in shown
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_provenance_comes_from_rows(fixture_runs: Path) -> None:
    text = to_markdown(ablation_table(_rows(fixture_runs, "synthetic"), modes=ABLATION))
    assert "fixturecommit" in text and "mlflow-lofi-S-1" in text and "hash-acp-0" in text
    assert "hash-icp-0" not in text  # only the runs shown in the table


def test_published_numbers_absent_for_synthetic(fixture_runs: Path) -> None:
    for build in (ablation_table, pretrain_table):
        table = build(_rows(fixture_runs, "synthetic"))
        assert not any("Paper" in c for c in table.display.columns)
        assert not any(c.startswith("paper_") for c in table.numeric.columns)
        text = to_markdown(table) + to_latex(table)
        for r in PUBLISHED:  # no published value anywhere in the synthetic tables
            for v in r.values.values():
                assert f"{v:.2f}" not in text
        assert "not comparable" in text


def test_published_numbers_beside_measured_for_activitynet(fixture_runs: Path) -> None:
    table = ablation_table(_rows(fixture_runs, "activitynet"), modes=ABLATION)
    shown = table.display.set_index("Config")
    assert shown.loc["ACP", "Paper Avg"] == "33.59" and shown.loc["Long C-LoFi", "Paper Avg"] == "34.49"
    assert shown.loc["ACP", "Δ paper"] == "-2.59"  # 31.00 - 33.59
    assert table.numeric.set_index("mode").loc["lofi-S", "paper_mAP_0.50"] == 50.47
    pre = pretrain_table(_rows(fixture_runs, "activitynet"), modes=PRETRAIN).display.set_index("Config")
    assert pre.loc["ICP", "Paper Avg"] == "32.16"


def test_models_and_memory_tables(fixture_runs: Path) -> None:
    rows = load_rows(sorted(fixture_runs.glob("activitynet/**/row.json")))
    models = models_table(rows, modes=("acp", "lofi-long")).display
    assert list(zip(models["Encoder"], models["Config"])) == [
        ("tsm_resnet18", "ACP"),
        ("tsm_resnet18", "LoFi"),
        ("tsm_resnet34", "ACP"),
        ("tsm_resnet34", "LoFi"),
    ]
    shown = models.set_index(["Encoder", "Config"])
    assert shown.loc[("tsm_resnet34", "LoFi"), "Paper Avg"] == "34.74"
    assert shown.loc[("tsm_resnet18", "LoFi"), "Avg"] == "37.00 ± 1.41"  # (36 + 38) / 2
    assert r"tsm\_resnet18" in to_latex(models_table(rows, modes=("acp",)))  # tabulate escapes LaTeX specials
    memory = memory_table(_rows(fixture_runs, "synthetic")).display
    st = memory[memory["Config"] == "ST-LoFi"].iloc[0]
    assert (st["Rel. to full"], st["Activations (MiB)"], st["Full fidelity (MiB)"]) == ("0.25", "256.0", "1024.0")
    assert memory[memory["Config"] == "ACP"].iloc[0][["Rel. to full", "Activations (MiB)"]].tolist() == ["–", "–"]
    assert st["lofi (s)"] == "10.5"  # time_lofi_s of seeds 0 and 1: 10 and 11
    assert not any("Peak" in c for c in memory.columns)  # no row carries peak_bytes: no column claims one


def test_memory_table_shows_a_peak_only_where_rows_carry_one(fixture_runs: Path) -> None:
    rows = _rows(fixture_runs, "synthetic")
    rows = rows.assign(peak_bytes=np.where(rows["mode"] == "lofi-S", 3 * 2.0**30, np.nan))
    memory = memory_table(rows, modes=("acp", "lofi-S")).display.set_index("Config")
    assert memory["Peak (GiB)"].tolist() == ["–", "3.00"]


def test_memory_table_takes_peak_and_throughput_from_a_step_benchmark(fixture_runs: Path) -> None:
    rows = _rows(fixture_runs, "synthetic")
    bench = [  # lofi bench step --json rows (a GPU's); bf16 is preferred over fp32 where both were measured
        {"fidelity": f, "precision": p, "batch": 16, "step_s": s, "frames_per_s": fps, "peak_bytes": peak, "error": ""}
        for f, p, s, fps, peak in [
            ("S", "bf16", 0.5, 1000.0, 2 * 2**30),
            ("T", "bf16", 0.25, 2000.0, 1 * 2**30),
            ("ST", "bf16", 0.4, 1500.0, 3 * 2**30),
            ("S", "fp32", 9.0, 1.0, 9 * 2**30),
        ]
    ] + [{"fidelity": "full", "precision": "bf16", "batch": 16, "step_s": None, "error": "OOM"}]
    memory = memory_table(rows, modes=("acp", "lofi-S", "lofi-long"), step_bench=bench)
    shown = memory.display.set_index("Config")
    assert shown.loc["S-LoFi", ["Peak (GiB)", "Step (s)", "Frames/s"]].tolist() == ["2.00", "0.500", "1000"]
    # a cycle: the largest peak of its fidelities, no single step time
    assert shown.loc["Long C-LoFi", ["Peak (GiB)", "Step (s)"]].tolist() == ["3.00", "–"]
    assert shown.loc["ACP", "Peak (GiB)"] == "–"
    assert "bf16, batch 16" in " ".join(memory.notes)
    with pytest.raises(TableError, match="no successful row"):
        memory_table(rows, step_bench=[{"fidelity": "S", "precision": "bf16", "batch": 1, "step_s": None}])


def test_tables_take_their_rows_and_order_from_modes(fixture_runs: Path) -> None:
    rows = _rows(fixture_runs, "synthetic")
    assert list(ablation_table(rows, modes=("lofi-long", "acp", "lofi-T")).display["Config"]) == [
        "Long C-LoFi",
        "ACP",
        "T-LoFi",
    ]
    assert list(pretrain_table(rows, modes=table_modes(SweepConfig())["pretrain"]).display["Config"]) == [
        "ICP",
        "ACP",
        "ACP+",
        "LoFi",
    ]
    with pytest.raises(TableError, match="none of the ablation table's modes"):
        ablation_table(rows, modes=("e2e-full",))
    assert set(MODE_LABELS) == set(MODES)  # every mode has a label (and its place in the canonical order)


def test_an_e2e_full_mode_in_the_config_gets_its_row(fixture_runs: Path, tmp_path: Path) -> None:
    gt = fixture_runs / "annotations.json"
    db = json.loads(gt.read_text())["database"]
    e2e = [_write_run(tmp_path / "runs", "synthetic", "e2e-full", seed, db, gt) for seed in (0, 1)]
    others = sorted((fixture_runs / "synthetic" / "tsm_resnet18").glob("*/seed*"))
    rows = load_rows([*others, *e2e])
    # the library: the config's ablation_modes name the rows
    sweep = SweepConfig(ablation_modes=(*SweepConfig().ablation_modes, "e2e-full"))
    table = ablation_table(rows, modes=table_modes(sweep)["ablation"]).display.set_index("Config")
    assert list(table.index)[-1] == "End-to-end (full fidelity)"
    assert table.loc["End-to-end (full fidelity)", ["Avg", "L", "H×W", "Act. mem. (rel.)"]].tolist() == [
        "41.00 ± 1.41",
        "100",
        "224²",
        "1.00",
    ]
    # the command: --config/--set choose the same rows, with a comparison against ACP
    out = tmp_path / "out"
    rc = main(
        [
            "-q",
            "report",
            "tables",
            "--runs",
            *map(str, [*others, *e2e]),
            "--out",
            str(out),
            "--which",
            "ablation",
            "--no-plots",
            "--n-boot",
            "20",
            "--config",
            str(ROOT / "config" / "smoke.yaml"),
            "--set",
            "sweep.ablation_modes=[acp,e2e-full]",
        ]
    )
    assert rc == 0
    cells = _markdown_table((out / "table_ablation.md").read_text())
    assert [r[0] for r in cells[1:]] == ["ACP", "End-to-end (full fidelity)"]
    numeric = pd.read_csv(out / "table_ablation.csv").set_index("mode")
    assert (
        numeric.loc["e2e-full", "delta_ci_low"]
        <= numeric.loc["e2e-full", "delta_avg"]
        <= numeric.loc["e2e-full", "delta_ci_high"]
    )
    assert "Holm-corrected over 1 comparison(s)" in (out / "table_ablation.md").read_text()


def test_report_command_end_to_end(fixture_runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    rc = main(
        [
            "-q",
            "report",
            "tables",
            "--runs-glob",
            str(fixture_runs / "synthetic" / "**" / "row.json"),
            "--out",
            str(out),
            "--n-boot",
            "40",
            "--seed",
            "0",
            "--config",
            str(ROOT / "config" / "default.yaml"),
        ]
    )
    assert rc == 0
    for kind in ("ablation", "pretrain", "models", "memory"):
        for ext in ("md", "csv", "tex"):
            assert (out / f"table_{kind}.{ext}").stat().st_size > 0
    assert (out / "plot_map_vs_tiou_synthetic_tsm_resnet18_gtad.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "plot_map_vs_memory_synthetic_tsm_resnet18_gtad.png").exists()
    numeric = pd.read_csv(out / "table_ablation.csv").set_index("mode")
    others = numeric.drop(index="acp")
    assert others["p_holm"].between(1 / 41, 1).all()
    assert (others["p_holm"] >= others["p_value"]).all()  # Holm never lowers a p-value
    assert (others["delta_ci_low"] <= others["delta_ci_high"]).all()
    text = (out / "table_ablation.md").read_text()
    assert f"n = {N_VIDEOS} test videos" in text and "Holm-corrected over 5 comparison(s)" in text
    # same seed -> same numbers, through the library call the command makes
    build_report(
        load_rows(sorted(fixture_runs.glob("synthetic/**/row.json"))),
        out=tmp_path / "again",
        kinds=["ablation"],
        modes=table_modes(SweepConfig()),
        n_boot=40,
        seed=0,
        plots=False,
    )
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "again" / "table_ablation.csv"), pd.read_csv(out / "table_ablation.csv")
    )


def test_missing_row_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(TableError, match=r"no row\.json") as exc:
        load_rows([tmp_path])
    assert "\n" not in str(exc.value)


def test_paper_results_lookup() -> None:
    assert canonical_dataset("ActivityNet-v1.3") == "activitynet" and canonical_dataset("HACS") == "hacs"
    assert canonical_dataset("synthetic-default") is None
    assert published("ablation", "hacs", "lofi-long").values == {"average_mAP": 24.64}
    assert published("ablation", "synthetic", "acp") is None


def _comparison(config: str, diff: float, lo: float, hi: float, p: float, se: float) -> Comparison:
    return Comparison(
        config=config,
        baseline="acp",
        diff=diff,
        ci_low=lo,
        ci_high=hi,
        p_value=p,
        p_adjusted=p,
        n_videos=N_VIDEOS,
        n_seeds=2,
        n_seeds_baseline=2,
        n_boot=100,
        n_perm=100,
        metric="average_mAP",
        se=se,
        mde=minimum_detectable_effect(se),
    )


def test_mde_note_prints_2_80_times_the_bootstrap_se_and_says_when_nothing_is_significant() -> None:
    quiet = [_comparison("lofi-S", 0.01, -0.01, 0.03, 0.4, 0.01), _comparison("lofi-T", 0.0, -0.04, 0.04, 0.9, 0.02)]
    text = mde_note(quiet)
    assert "(z_0.975 + z_0.80) × SE = 2.80 × SE" in text
    assert ": 2.80–5.60 points" in text  # 2.80 x 1 and 2.80 x 2 points (SE 0.01 and 0.02 in fractions)
    assert "No Δ is significant" in text and "does not tell these configurations apart" in text
    loud = mde_note([_comparison("lofi-S", 0.05, 0.02, 0.08, 0.01, 0.01)])
    assert ": 2.80 points" in loud and "Significant (p (Holm) < 0.05): S-LoFi (+5.00)" in loud


def test_every_table_with_tests_states_its_mde(fixture_runs: Path, tmp_path: Path) -> None:
    build_report(
        load_rows(sorted(fixture_runs.glob("activitynet/**/row.json"))),
        out=tmp_path,
        kinds=["ablation", "pretrain", "models"],
        modes=table_modes(SweepConfig()),
        n_boot=30,
        plots=False,
    )
    for kind in ("ablation", "pretrain", "models"):
        text = (tmp_path / f"table_{kind}.md").read_text()
        assert "MDE (minimum detectable effect" in text and "2.80 × SE" in text
        numeric = pd.read_csv(tmp_path / f"table_{kind}.csv")
        tested = numeric.dropna(subset=["delta_se"])
        np.testing.assert_allclose(tested["mde"], 2.8016 * tested["delta_se"], rtol=1e-4)


def test_share_of_gain_column_only_with_an_end_to_end_gain(fixture_runs: Path, tmp_path: Path) -> None:
    gt = fixture_runs / "annotations.json"
    db = json.loads(gt.read_text())["database"]
    e2e = [_write_run(tmp_path / "runs", "synthetic", "e2e-full", seed, db, gt) for seed in (0, 1)]
    rows = load_rows([*sorted((fixture_runs / "synthetic" / "tsm_resnet18").glob("*/seed*")), *e2e])
    modes = ("acp", "lofi-S", "e2e-full")
    share = {"lofi-S": RatioResult(estimate=0.2, ci_low=-0.1, ci_high=0.45, samples=np.zeros(100))}
    lofi = _comparison("lofi-S", 0.02, -0.01, 0.05, 0.3, 0.01)
    gain = {"lofi-S": lofi, "e2e-full": _comparison("e2e-full", 0.10, 0.04, 0.16, 0.01, 0.03)}
    shown = ablation_table(rows, gain, modes=modes, shares=share).display.set_index("Config")
    assert shown[SHARE_COLUMN].tolist() == ["0 (ACP)", "0.20 [-0.10, 0.45]", "1 (reference)"]
    no_gain = {"lofi-S": lofi, "e2e-full": _comparison("e2e-full", 0.01, -0.02, 0.04, 0.5, 0.015)}
    table = ablation_table(rows, no_gain, modes=modes, shares=share)
    assert table.display.set_index("Config").loc["S-LoFi", SHARE_COLUMN] == NO_GAIN
    assert np.isnan(table.numeric.set_index("mode").loc["lofi-S", "gain_share"])  # no meaningless ratio in the CSV
    assert "no gain to take a share of" in " ".join(table.notes)
    # without e2e-full among the rows, no share column at all
    assert SHARE_COLUMN not in ablation_table(rows, gain, modes=("acp", "lofi-S"), shares=share).display.columns
