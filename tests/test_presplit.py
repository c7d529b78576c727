"""MMRec-format pre-split datasets (``x_label`` 0/1/2) run in RecBole with the file's own split."""

import json

import numpy as np
import pytest

from urecjpq_plugin.data.presplit import PresplitError, mmrec_inter_file, recbole_presplit


def _mmrec_dataset(root, name="mini", users=40, items=30, per_user=8, seed=0):
    """Each user: per_user distinct items, the last two as valid (1) and test (2)."""
    rng = np.random.default_rng(seed)
    rows = ["userID\titemID\trating\ttimestamp\tx_label"]
    split = {}
    for u in range(users):
        chosen = rng.choice(items, size=per_user, replace=False)
        for t, i in enumerate(chosen):
            label = 0 if t < per_user - 2 else (1 if t == per_user - 2 else 2)
            rows.append(f"{u}\t{i}\t1\t0\t{label}")
            split[(u, int(i))] = label
    folder = root / name
    folder.mkdir(parents=True)
    (folder / f"{name}.inter").write_text("\n".join(rows) + "\n")
    return root, split


def test_conversion_keeps_every_row_in_its_split(tmp_path):
    data, split = _mmrec_dataset(tmp_path / "data")
    config = recbole_presplit("mini", data, cache=tmp_path / "cache")
    assert config["benchmark_filename"] == ["train", "valid", "test"]
    seen = {}
    for label, name in enumerate(config["benchmark_filename"]):
        lines = (tmp_path / "cache" / "mini" / f"mini.{name}.inter").read_text().splitlines()
        assert lines[0] == "user_id:token\titem_id:token"
        for line in lines[1:]:
            u, i = map(int, line.split("\t"))
            seen[(u, i)] = label
    assert seen == split
    assert not list((data / "mini").glob("mini.*.inter"))  # nothing written next to the user's data


def test_not_mmrec_format_and_bad_labels_are_refused(tmp_path):
    folder = tmp_path / "atomic"
    folder.mkdir()
    (folder / "atomic.inter").write_text("user_id:token\titem_id:token\n1\t2\n")
    assert mmrec_inter_file("atomic", tmp_path) is None
    with pytest.raises(PresplitError, match="not an MMRec-format file"):
        recbole_presplit("atomic", tmp_path, cache=tmp_path / "cache")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "bad.inter").write_text("userID\titemID\tx_label\n0\t1\t0\n0\t2\t7\n")
    with pytest.raises(PresplitError, match=r"x_label values \[0, 7\]"):
        recbole_presplit("bad", tmp_path, cache=tmp_path / "cache")


def test_recbole_trains_on_the_files_split(tmp_path, monkeypatch, recbole_env):
    from urecjpq_bench.recbole_runner import build_trainer

    data, split = _mmrec_dataset(tmp_path / "data")
    overrides = {**recbole_env, **recbole_presplit("mini", data, cache=tmp_path / "cache"), "epochs": 1, "jpq": True,
                 "jpq_ksub": 16}
    config, dataset, trainer, (train, valid, test) = build_trainer("BPR", "mini", overrides)
    sizes = [len(part.dataset) for part in (train, valid, test)]
    labels = list(split.values())
    assert sizes == [labels.count(0), labels.count(1), labels.count(2)]
    # The held-out rows RecBole evaluates on are exactly the file's valid rows.
    uid, iid = valid.dataset.inter_feat["user_id"].numpy(), valid.dataset.inter_feat["item_id"].numpy()
    users, items = dataset.field2id_token["user_id"], dataset.field2id_token["item_id"]
    got = {(int(users[u]), int(items[i])) for u, i in zip(uid, iid)}
    assert got == {k for k, v in split.items() if v == 1}
    trainer.fit(train, valid, saved=False, show_progress=False)


def test_bench_runs_on_a_presplit_dataset(tmp_path):
    from urecjpq_bench import run

    data, _ = _mmrec_dataset(tmp_path / "data")
    out = tmp_path / "results"
    rc = run.main(["--dataset", "mini", "--data-path", str(data), "--models", "BPR", "--epochs", "1",
                   "--ksub", "16", "--out", str(out), "--no-progress"])
    assert rc == 0
    record = json.loads((out / "runs" / "BPR-base-s2020.json").read_text())
    assert record["status"] == "ok"
    assert record["spec"]["overrides"]["benchmark_filename"] == ["train", "valid", "test"]
    assert (out / "data" / "mini" / "mini.train.inter").is_file()


def test_tables_command_reads_a_presplit_dataset(tmp_path, monkeypatch, capsys, recbole_env):
    from urecjpq_plugin.hosts.tables_cli import main

    data, _ = _mmrec_dataset(tmp_path / "data")
    monkeypatch.setenv("URECJPQ_CACHE", str(tmp_path / "cache"))
    assert main(["--model", "BPR", "--dataset", "mini", "--data-path", str(data), "--ksub", "16"]) == 0
    out = capsys.readouterr().out
    assert "user_embedding" in out and " 41 " in out and " 31 " in out  # 40 users, 30 items, RecBole's padding row
    assert (tmp_path / "cache" / "recbole-data" / "mini" / "mini.train.inter").is_file()
