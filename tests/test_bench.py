"""`urecjpq bench` / `bench-scale` plumbing on tiny runs: outputs, consistency, resume, isolation, guards."""

import csv
import json

import numpy as np
import pytest

from urecjpq_bench import report, run, scale
from urecjpq_bench.hosts import BenchRunnerError, check_result
from urecjpq_bench.store import BenchFolderError
from urecjpq_plugin.config import URecJPQError
from tests.conftest import entry_point

MODELS = "BPR,LightGCN"


def _tiny_dataset(root):
    """60 users x 50 items, 15 interactions each: RecBole loads and trains it in about a second."""
    rng = np.random.default_rng(0)
    folder = root / "tiny"
    folder.mkdir(parents=True)
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for u in range(60):
        for t, i in enumerate(rng.choice(50, size=15, replace=False)):
            lines.append(f"{u}\t{i}\t1\t{t}")
    (folder / "tiny.inter").write_text("\n".join(lines) + "\n")
    return root


def _args(data_root, out, *extra):
    # ksub 16: the tiny tables have 61 and 51 rows, and ksub may not exceed a table's rows.
    return ["--dataset", "tiny", "--set", f"data_path={data_root}", "--epochs", "1", "--out", str(out),
            "--ksub", "16", "--no-progress", *extra]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    data = _tiny_dataset(root / "data")
    out = root / "results"
    rc = run.main(_args(data, out, "--models", MODELS, "--jobs", "2"))  # two runs at a time
    return {"data": data, "out": out, "rc": rc}


def _rows(out):
    with open(out / "results.csv") as fh:
        return list(csv.DictReader(fh))


def test_outputs_present_and_consistent(bench):
    out = bench["out"]
    assert bench["rc"] == 0
    records = {p.stem: json.loads(p.read_text()) for p in (out / "runs").glob("*.json")}
    assert set(records) == {"BPR-base-s2020", "BPR-jpq-Mauto-k16-auto-user+item-s2020", "LightGCN-base-s2020",
                            "LightGCN-jpq-Mauto-k16-auto-user+item-s2020"}
    for rid, rec in records.items():
        assert rec["status"] == "ok", rec.get("error")
        assert rec["epochs"] == 1 and rec["seconds_per_epoch"] > 0
        assert rec["peak_rss_bytes"] > 50 << 20  # a whole interpreter with torch, measured per child
        assert rec["checkpoint_bytes"] > 0 and 0 < rec["params"]["id_tables"] <= rec["params"]["total"]
        assert all(0.0 <= rec["metrics"][m] <= 1.0 for m in ("recall@10", "recall@20", "ndcg@10", "ndcg@20"))
        assert rec["spec"]["overrides"]["jpq"] == ("jpq" in rid)
    rows = {r["run_id"]: r for r in _rows(out)}
    assert set(rows) == set(records)
    for model in MODELS.split(","):
        base, jpq = records[f"{model}-base-s2020"], records[f"{model}-jpq-Mauto-k16-auto-user+item-s2020"]
        assert jpq["params"]["id_tables"] == 2 * 16 * 64  # ksub * d per table
        assert base["params"]["id_tables"] == (61 + 51) * 64  # RecBole adds a padding row
        row = rows[f"{model}-jpq-Mauto-k16-auto-user+item-s2020"]
        expect = (jpq["metrics"]["recall@20"] - base["metrics"]["recall@20"]) / base["metrics"]["recall@20"]
        assert float(row["rel_recall@20"]) == pytest.approx(expect)
        assert float(row["rel_params_id_tables"]) == pytest.approx(
            (jpq["params"]["id_tables"] - base["params"]["id_tables"]) / base["params"]["id_tables"])
        assert rows[f"{model}-base-s2020"]["rel_recall@20"] == ""
    md = (out / "results.md").read_text()
    assert md.count("| BPR |") == 2 and md.count("| LightGCN |") == 2 and "Mean relative change" in md
    for png in ("accuracy_vs_params.png", "accuracy_vs_M.png"):
        assert (out / "plots" / png).read_bytes()[:4] == b"\x89PNG"


def test_resume_reruns_only_what_is_missing(bench):
    out, data = bench["out"], bench["data"]
    runs = out / "runs"
    interrupted = runs / "LightGCN-jpq-Mauto-k16-auto-user+item-s2020.json"
    interrupted.unlink()  # as if the bench was stopped during this run
    kept = {p.name: p.stat().st_mtime_ns for p in runs.glob("*.json")}
    assert run.main(_args(data, out, "--models", MODELS)) == 0
    assert {p.name: p.stat().st_mtime_ns for p in runs.glob("*.json") if p.name in kept} == kept
    assert json.loads(interrupted.read_text())["status"] == "ok"
    assert len(_rows(out)) == 4


def test_a_crashing_run_is_recorded_and_the_bench_goes_on(bench, tmp_path, capsys):
    # An interpreter that dies at once stands in for a run that crashes (or is killed for memory).
    rc = run.main(_args(bench["data"], tmp_path / "out", "--models", "BPR", "--python", "/bin/false"))
    assert rc == 1
    err = capsys.readouterr().err
    assert "2 run(s) failed" in err and "BPR-base-s2020: exit status 1" in err
    runs = tmp_path / "out" / "runs"
    records = [json.loads(p.read_text()) for p in runs.glob("*.json")]
    assert len(records) == 2 and all(r["status"] == "failed" and "exit status 1" in r["error"] for r in records)
    assert _rows(tmp_path / "out") == []  # failed runs are not results


def test_other_settings_refuse_the_folder(bench):
    with pytest.raises(BenchFolderError, match="'epochs': 2.*now.*'epochs': 1.*there"):
        run.main(_args(bench["data"], bench["out"], "--models", MODELS, "--epochs", "2"))


def test_folder_that_is_not_a_bench_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(BenchFolderError, match="not empty"):
        run.main(["--out", str(tmp_path), "--no-progress"])
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_plan_sweeps_every_combination():
    args = run.parse_args(["--models", "BPR,NGCF", "--M", "4,8", "--ksub", "16,256", "--targets", "user+item,item"])
    settings, specs = run.plan(args)
    assert len(specs) == 2 * (1 + 2 * 2 * 2)
    assert {s["run_id"] for s in specs} >= {"NGCF-base-s2020", "BPR-jpq-M4-k16-auto-item-s2020",
                                            "NGCF-jpq-M8-k16-auto-user+item-s2020"}
    assert all(s["overrides"]["epochs"] == settings["set"]["epochs"] == 30 for s in specs)


def test_plan_runs_every_cell_once_per_seed():
    _, specs = run.plan(run.parse_args(["--models", "BPR", "--seeds", "1,2,3"]))
    assert sorted(s["run_id"] for s in specs) == sorted(
        f"BPR-{v}-s{seed}" for seed in (1, 2, 3) for v in ("base", "jpq-Mauto-k256-auto-user+item"))
    assert {s["overrides"]["seed"] for s in specs} == {1, 2, 3}


def test_host_budget_leaves_recbole_defaults_alone():
    settings, specs = run.plan(run.parse_args(["--models", "BPR", "--budget", "host"]))
    for spec in specs:
        assert not {"epochs", "stopping_step", "learning_rate", "train_batch_size"} & set(spec["overrides"])
    assert "own training defaults" in run._title(settings, [2020])


@pytest.mark.parametrize(
    "argv, word",
    [(["--M", "3x"], "--M"), (["--ksub", "1"], "jpq_ksub"), (["--code-assign", "pca"], "pca"),
     (["--host", "tensorflow"], "tensorflow"), (["--host", "mmrec"], "--dataset"),
     (["--host", "mmrec", "--dataset", "ml100k-mm"], "--mmrec-src"),
     (["--models", "BPR,Nope"], "'Nope' is not a RecBole model"),
     (["--models", "lightgc"], "LightGCN"),
     (["--M", "7"], "not a multiple of jpq_M=7"), (["--targets", "user+thing"], "thing"),
     (["--dataset", "no-such-data"], "no-such-data"), (["--seeds", "1,1"], "--seeds"),
     (["--epochs", "0"], "--epochs"), (["--jobs", "0"], "--jobs 0"), (["--threads", "0"], "--threads 0"),
     (["--threads", "-1"], "--threads -1"), (["--timeout", "0"], "--timeout 0")],
)
def test_bad_options_are_one_line_errors(argv, word):
    with pytest.raises(URecJPQError, match=word) as err:
        run.plan(run.parse_args(argv))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("argv, word", [(["--threads", "0"], "--threads 0"), (["--batch", "0"], "--batch 0"),
                                        (["--epochs", "-1"], "--epochs -1"), (["--per-user", "0"], "--per-user 0"),
                                        (["--lr", "0"], "--lr 0")])
def test_bench_scale_bad_counts_are_one_line(argv, word):
    with pytest.raises(URecJPQError, match=word) as err:
        scale.plan(scale.parse_args(["--sizes", "1e4", *argv]))
    assert "\n" not in str(err.value)


def test_repeated_models_run_once(capsys):
    _, specs = run.plan(run.parse_args(["--models", "BPR,LightGCN,BPR"]))
    assert [s["run_id"] for s in specs if s["jpq"] is None] == ["BPR-base-s2020", "LightGCN-base-s2020"]
    assert "names BPR more than once" in capsys.readouterr().err


def test_out_that_is_a_file_is_one_line_and_left_alone(tmp_path):
    import subprocess

    target = tmp_path / "results.txt"
    target.write_text("mine\n")
    done = subprocess.run([entry_point("urecjpq"), "bench", "--models", "BPR", "--out", str(target), "--no-progress"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and target.read_text() == "mine\n"
    assert done.stderr.strip().count("\n") == 0 and "is a file, not a folder" in done.stderr


def test_runner_contract_is_checked():
    with pytest.raises(BenchRunnerError, match="checkpoint_bytes"):
        check_result({"metrics": dict.fromkeys(("recall@10", "recall@20", "ndcg@10", "ndcg@20"), 0.1),
                      "epochs": 1, "seconds_per_epoch": 1.0, "params": {}})


def test_mmrec_records_are_mapped_onto_the_contract():
    from urecjpq_bench.mmrec_runner import to_bench_record

    metrics = {"recall@10": 0.1, "recall@20": 0.2, "ndcg@10": 0.05, "ndcg@20": 0.07, "precision@5": 0.3}
    record = to_bench_record({"test_result": metrics, "trainable_params": 9, "id_table_params": 5,
                              "feature_params": 3, "checkpoint_bytes": 100, "epochs_run": 2, "seconds_per_epoch": 1.5})
    assert check_result(record)["params"] == {"id_tables": 5, "features": 3, "total": 9}
    assert record["epochs"] == 2 and record["metrics"]["ndcg@20"] == 0.07


def test_an_mmrec_run_stopped_by_a_nan_loss_is_a_failure_not_a_row_of_zeros():
    # MMRec's DualGNN at its first grid point (learning_rate 0.1) turns NaN in its first epoch on TikTok; MMRec
    # logs "Loss is nan ... Exiting." and reports zeros, which the bench used to record as an ok run.
    import torch

    from urecjpq_bench.hosts import BenchRunnerError
    from urecjpq_bench.mmrec_runner import to_bench_record
    from urecjpq_plugin.hosts.mmrec.runner import _wrap_trainer

    class Trainer:  # MMRec's Trainer as far as the wrapper uses it
        def __init__(self, config, model, mg=False):
            self.config, self.model = config, model

        def _train_epoch(self, train_data, epoch_idx):
            return 0.5 if epoch_idx == 0 else (torch.tensor(float("nan")), torch.tensor(0.0))

        def evaluate(self, *args, **kwargs):
            return {}

        def fit(self, *args, **kwargs):
            return 0.0, {}, {}

    trainer = _wrap_trainer(Trainer)(None, None)
    assert trainer._train_epoch(None, 0) == 0.5 and trainer.__dict__.get("_urecjpq_nan_epoch") is None
    trainer._train_epoch(None, 1)
    assert trainer._urecjpq_nan_epoch == 1

    zeros = {"recall@20": 0.0, "ndcg@20": 0.0, "recall@10": 0.0, "ndcg@10": 0.0}
    record = {"model": "DualGNN", "hyper": {"learning_rate": 0.1}, "test_result": zeros, "trainable_params": 9,
              "id_table_params": 5, "checkpoint_bytes": 0, "epochs_run": 1, "seconds_per_epoch": 1.0}
    assert to_bench_record({**record, "loss_nan_epoch": None})["metrics"]["recall@20"] == 0.0
    with pytest.raises(BenchRunnerError, match=r"DualGNN: training loss became NaN at epoch 0 \(learning_rate=0.1\)"):
        to_bench_record({**record, "loss_nan_epoch": 0})

    # ... and the NaN epoch reaches the bench through hosts.mmrec.run_one's record (it once dropped it, so DRAGON's
    # first grid point was kept as an ok run of zeros)
    from urecjpq_plugin.hosts.mmrec.hook import bench_record

    runner_record = {**record, "best_valid_score": 0.0, "checkpoint": None, "feature_params": 0, "jpq_tables": {},
                     "cpu_seconds_per_epoch": 1.0, "cpu_seconds_per_eval": 0.0}
    ok = to_bench_record(bench_record([{**runner_record, "loss_nan_epoch": None}]))
    assert ok["hyper"] == {"learning_rate": 0.1} and ok["epochs"] == 1 and "loss_nan_epoch" not in ok
    with pytest.raises(BenchRunnerError, match=r"DualGNN: training loss became NaN at epoch 0 \(learning_rate=0.1\)"):
        to_bench_record(bench_record([{**runner_record, "loss_nan_epoch": 0}]))


def test_relative_change_and_mean_summary():
    def rec(model, jpq, recall, params):
        return {"run_id": f"{model}-{jpq}", "status": "ok", "jpq": {"M": 8, "ksub": 256, "code_assign": "svd",
                "targets": ["user", "item"]} if jpq else None, "spec": {"model": model, "dataset": "d"},
                "metrics": {"recall@10": recall, "recall@20": recall, "ndcg@10": recall, "ndcg@20": recall},
                "params": {"id_tables": params, "features": 0, "total": params}, "checkpoint_bytes": params}

    rows = report.build_rows([rec("A", False, 0.2, 1000), rec("A", True, 0.19, 10),
                              rec("B", False, 0.4, 1000), rec("B", True, 0.42, 10)])
    summary = report.mean_changes(rows)
    (s,) = summary.values()
    assert s["models"] == 2 and s["recall@20"] == pytest.approx((-0.05 + 0.05) / 2)
    assert s["worst_recall@20"] == pytest.approx(-0.05)
    assert s["params_id_tables"] == pytest.approx(-0.99)


def test_seeds_give_mean_std_and_the_change_of_the_means():
    def rec(jpq, seed, recall):
        return {"run_id": f"A-{jpq}-{seed}", "status": "ok", "jpq": {"M": 8, "ksub": 256, "code_assign": "svd",
                "targets": ["user", "item"]} if jpq else None, "spec": {"model": "A", "dataset": "d", "seed": seed},
                "metrics": dict.fromkeys(("recall@10", "recall@20", "ndcg@10", "ndcg@20"), recall),
                "params": {"id_tables": 1, "features": 0, "total": 1}, "checkpoint_bytes": 1}

    rows = report.build_rows([rec(False, 1, 0.2), rec(False, 2, 0.4), rec(True, 1, 0.3), rec(True, 2, 0.3)])
    # per run: against the base of the same seed
    assert sorted(r["rel_recall@20"] for r in rows if r["variant"] == "jpq") == pytest.approx([-0.25, 0.5])
    cells = {a["variant"]: a for a in report.aggregate(rows)}
    assert cells["base"]["recall@20"] == pytest.approx(0.3) and cells["base"]["sd_recall@20"] == pytest.approx(0.1414, abs=1e-4)
    assert cells["jpq"]["rel_recall@20"] == pytest.approx(0.0)  # change of the means, not mean of changes
    assert "0.3000 ± 0.1414" in report.markdown(rows)


def test_context_aware_runs_report_auc_and_logloss(tmp_path):
    """CTR models (FM, DeepFM ...) carry AUC/LogLoss: the tables show those columns, LogLoss's worst is its rise."""
    def rec(model, jpq, auc, logloss):
        return {"run_id": f"{model}-{jpq}", "status": "ok", "jpq": {"M": "auto", "ksub": 256, "code_assign": "auto",
                "targets": ["user", "item"]} if jpq else None, "spec": {"model": model, "dataset": "ml-100k"},
                "metrics": {"auc": auc, "logloss": logloss}, "params": {"id_tables": 100 if jpq else 1000,
                "features": 0, "total": 2000}, "checkpoint_bytes": 10, "epochs": 1, "seconds_per_epoch": 1.0}

    records = [rec("FM", False, 0.78, 0.56), rec("FM", True, 0.77, 0.57),
               rec("DeepFM", False, 0.79, 0.57), rec("DeepFM", True, 0.79, 0.56)]
    assert check_result(records[0]) and report.evaluations(report.build_rows(records)) == ["ctr"]
    rows = report.build_rows(records)
    (s,) = report.mean_changes(rows, "ctr").values()
    assert s["models"] == 2 and s["auc"] == pytest.approx((0.77 / 0.78 - 1) / 2)
    assert s["worst_logloss"] == pytest.approx(0.57 / 0.56 - 1) and s["params_id_tables"] == pytest.approx(-0.9)
    md = report.markdown(rows)
    assert "| model | setting | seeds | AUC | LogLoss | ID-table params |" in md and "recall@20" not in md
    assert "| FM | uncompressed | 1 | 0.7800 | 0.5600 | 1,000 |" in md
    assert "| worst AUC | worst (highest) LogLoss |" in md
    paths = report.write_reports(records, tmp_path)
    assert paths["accuracy_vs_params"].exists()
    with pytest.raises(BenchRunnerError, match="metrics\\['recall@10'\\]"):
        check_result({**records[0], "metrics": {"auc": 0.7}})  # neither evaluation complete


def test_cpu_seconds_columns_appear_with_records_that_carry_them():
    """MMRec records carry CPU seconds per epoch / evaluation: the table shows them with their change; records
    without them (RecBole's) keep the table as it was."""
    def rec(jpq, cpu):
        out = {"run_id": f"BPR-{jpq}", "status": "ok", "spec": {"model": "BPR", "dataset": "tiktok"},
               "jpq": {"M": 16, "ksub": 256, "code_assign": "auto", "targets": ["user", "item"]} if jpq else None,
               "metrics": {m: 0.1 for m in ("recall@10", "recall@20", "ndcg@10", "ndcg@20")},
               "params": {"id_tables": 10 if jpq else 100, "features": 0, "total": 100}, "checkpoint_bytes": 10,
               "epochs": 3, "seconds_per_epoch": 9.0}
        return {**out, "cpu_seconds_per_epoch": cpu, "cpu_seconds_per_eval": cpu / 2} if cpu else out

    md = report.markdown(report.build_rows([rec(False, 2.0), rec(True, 2.2)]))
    assert "| s/epoch | CPU s/epoch | CPU s/eval | epochs |" in md
    assert "| 9.00 (+0.0%) | 2.20 (+10.0%) | 1.10 (+10.0%) | 3.0 |" in md
    assert "CPU s/epoch" not in report.markdown(report.build_rows([rec(False, None), rec(True, None)]))


def test_scale_bench_tiny_and_memory_guard(tmp_path):
    out = tmp_path / "scale"
    rc = scale.main(["--sizes", "300", "--max-steps", "3", "--eval-users", "20", "--batch", "64", "--out", str(out)])
    assert rc == 0
    recs = {p.stem: json.loads(p.read_text()) for p in (out / "runs").glob("*.json")}
    base, jpq = recs["3e2-base"], recs["3e2-jpq"]
    assert base["status"] == jpq["status"] == "ok", (base.get("error"), jpq.get("error"))
    # the synthetic data is sparse: each table trains its codebook and, with unit rows (auto), one length
    assert base["id_params"] == 2 * 300 * 64 and jpq["id_params"] == 2 * (8 * 256 * 8 + 1)
    assert base["optimizer_bytes"] == 2 * base["id_params"] * 4  # Adam's two moments
    assert jpq["code_seconds"] > 0 and "code_seconds" not in base and base["steps"] == jpq["steps"] == 3
    assert "| peak RSS |" in (out / "scale.md").read_text()
    small = tmp_path / "guard"
    assert scale.main(["--sizes", "1e7", "--memory-budget", "1G", "--out", str(small)]) == 0
    guarded = json.loads((small / "runs" / "1e7-base.json").read_text())
    assert guarded["status"] == "does not fit" and guarded["estimate_bytes"] > 15 << 30
    assert "does not fit" in (small / "scale.md").read_text()


def test_ctrl_c_is_one_line_and_records_no_failure(tmp_path, monkeypatch, capsys):
    data = _tiny_dataset(tmp_path / "data")
    out = tmp_path / "results"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # what a worker sees when Ctrl-C reaches the bench

    monkeypatch.setattr(run, "run_in_subprocess", interrupted)
    assert run.main(_args(data, out, "--models", "BPR")) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("urecjpq bench: interrupted; rerun the same command to resume")
    assert "Traceback" not in "\n".join(err)
    assert not list((out / "runs").glob("*.json"))  # nothing recorded as failed: a rerun runs it


def test_bench_without_its_extra_says_what_to_install(monkeypatch, capsys):
    """urecjpq_bench is its own package and needs the bench extra: without it, one line and exit code 2."""
    import sys

    from urecjpq_plugin.cli import main

    for name in [m for m in sys.modules if m == "urecjpq_bench" or m.startswith("urecjpq_bench.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tqdm", None)  # as if the extra were not installed
    assert main(["bench", "--models", "BPR"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'urecjpq_plugin[bench]'" in err and "tqdm" in err


def test_codes_from_base_takes_each_seeds_trained_rows(tmp_path):
    import torch

    from urecjpq_plugin.codes import kmeans_codes

    data = _tiny_dataset(tmp_path / "data")
    out = tmp_path / "results"
    assert run.main(_args(data, out, "--models", "BPR", "--codes-from-base", "--jobs", "2")) == 0
    base = json.loads((out / "runs" / "BPR-base-s2020.json").read_text())
    (jpq_path,) = (out / "runs").glob("BPR-jpq-*-codes_from_base-user+item-s2020.json")
    jpq = json.loads(jpq_path.read_text())
    assert jpq["spec"]["overrides"]["jpq_codes_from"] == base["checkpoint"]
    trained = torch.load(base["checkpoint"], weights_only=False)["state_dict"]
    compressed = torch.load(jpq["checkpoint"], weights_only=False)["state_dict"]
    for table in ("user_embedding", "item_embedding"):
        expected = kmeans_codes(trained[f"{table}.weight"], 16, 16, seed=2020)[0]  # M auto = 64 / 4, --ksub 16
        assert torch.equal(compressed[f"{table}.codes"], expected)
    assert "codes_from_base" in (out / "results.md").read_text()


def test_codes_from_base_after_a_failed_base_run_fails_naming_it(tmp_path, capsys):
    data = _tiny_dataset(tmp_path / "data")
    rc = run.main(_args(data, tmp_path / "out", "--models", "BPR", "--codes-from-base", "--python", "/bin/false"))
    assert rc == 1
    err = capsys.readouterr().err
    assert "  BPR-jpq-Mauto-k16-codes_from_base-user+item-s2020: --codes-from-base: the uncompressed run " \
           "BPR-base-s2020 failed; rerun the command to retry both" in err


def test_codes_from_base_and_a_code_assignment_are_one_line():
    with pytest.raises(URecJPQError, match="--codes-from-base takes the codes .* --code-assign svd would"):
        run.plan(run.parse_args(["--codes-from-base", "--code-assign", "svd"]))
