"""RecBole host end to end: CLI, checkpoint round trip, examples, bad input."""

import glob
import os
import subprocess
import sys

import pytest
import torch

from urecjpq_plugin.hosts.recbole.cli import main as cli_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def checkpoints(folder):
    return sorted(glob.glob(os.path.join(folder, "*.pth")))


def test_checkpoint_is_compact_and_reloads_with_identical_metrics(recbole_env, monkeypatch):
    from recbole.utils import get_trainer

    from urecjpq_plugin import assign

    from urecjpq_plugin.hosts.recbole.hook import load_data_and_model, run

    result = run("BPR", "ml-100k", config_dict={**recbole_env, "jpq": True, "jpq_M": 8, "epochs": 2})
    (path,) = checkpoints(recbole_env["checkpoint_dir"])
    state = torch.load(path, weights_only=False)["state_dict"]
    assert state["user_embedding.codes"].dtype == torch.uint8
    assert state["item_embedding.sub_embeddings"].shape == (8, 256, 8)
    assert "user_embedding.weight" not in state

    def no_svd(*args, **kwargs):
        raise AssertionError("reloading a checkpoint recomputed SVD codes")

    monkeypatch.setattr(assign, "svd_codes", no_svd)  # the checkpoint brings the codes
    config, model, _, _, _, test_data = load_data_and_model(path)
    assert torch.equal(model.item_embedding.codes, state["item_embedding.codes"])
    reloaded = get_trainer(config["MODEL_TYPE"], config["model"])(config, model).evaluate(
        test_data, load_best_model=False
    )
    assert dict(reloaded) == dict(result["test_result"])


def test_checkpoint_and_model_must_agree_on_compression(recbole_env):
    from recbole.quick_start import quick_start

    from urecjpq_plugin.hosts.recbole.hook import JPQCheckpointError

    from .test_recbole_models import build

    _, plain, *_ = build("BPR", recbole_env)
    _, compressed, *_ = build("BPR", {**recbole_env, "jpq": True})
    with pytest.raises(JPQCheckpointError, match="holds JPQ-compressed tables .* set jpq: true"):
        plain.load_state_dict(compressed.state_dict())
    with pytest.raises(JPQCheckpointError, match="holds an uncompressed table user_embedding.weight .* jpq: true"):
        compressed.load_state_dict(plain.state_dict())
    assert quick_start.get_model("BPR") is type(plain)


def test_cli_trains_evaluates_and_writes_checkpoint(tmp_path, monkeypatch, recbole_env):
    monkeypatch.setattr(sys, "argv", ["urecjpq-recbole"])
    ck = tmp_path / "ck"
    code = cli_main(["--model=BPR", "--dataset=ml-100k", "--jpq", "--epochs=1", f"--checkpoint_dir={ck}",
                     "--show_progress=False", "--train_batch_size=4096"])
    assert code == 0
    (path,) = checkpoints(ck)
    assert torch.load(path, weights_only=False)["config"]["jpq"] is True


@pytest.mark.parametrize(
    "args,message",
    [
        (["--jpq_ksub=1"], "jpq_ksub=1 is invalid; it must be an integer in [2, "),
        ([f"--jpq_ksub={2**33}"], "jpq_ksub=8589934592 is invalid"),
        (["--jpq_code_assign=pca"], "jpq_code_assign='pca' is unknown; valid: auto, svd_pq_cos, svd_pq, svd_pq_norm, svd, lightgcn_fit, random"),
        (["--jpq_targets=['user','movie']"], "unknown target 'movie'; valid: user, item, image, text"),
        (["--jpq_M=7"], "embedding size 64 of user_embedding is not a multiple of jpq_M=7"),
        (["--model=Pop"], "model Pop has no ID table for jpq_targets=['user', 'item']"),
        (["--jpq_targets=['image']"], "multimodal feature tables, which only the MMRec host has"),
        (["--jpq_Mm=8"], "jpq_Mm is not an option of the plugin; did you mean jpq_M?"),
        (["--jpq_split_dropout=1.5"], "jpq_split_dropout=1.5 is invalid"),
    ],
)
def test_bad_input_is_one_line_and_writes_no_checkpoint(args, message, tmp_path, monkeypatch, capsys, recbole_env):
    monkeypatch.setattr(sys, "argv", ["urecjpq-recbole"])
    ck = tmp_path / "ck"
    base = ["--model=BPR", "--dataset=ml-100k", "--jpq", "--epochs=1", f"--checkpoint_dir={ck}"]
    override = {a.split("=")[0] for a in args}
    code = cli_main([a for a in base if a.split("=")[0] not in override] + args)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and len(err.splitlines()) == 1
    assert checkpoints(ck) == []


def test_example_yaml_and_api_script_run(tmp_path, recbole_env):
    env = {**os.environ, "PYTHONPATH": ROOT}
    cli = [sys.executable, "-m", "urecjpq_plugin.hosts.recbole.cli", "--model=BPR", "--dataset=ml-100k",
           f"--config_files={ROOT}/examples/recbole_jpq.yaml", "--epochs=1", "--show_progress=False",
           f"--checkpoint_dir={tmp_path}/ck"]
    done = subprocess.run(cli, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "JPQ swapped 2 ID tables" in done.stdout + done.stderr
    api = [sys.executable, f"{ROOT}/examples/recbole_api.py", "--epochs", "1"]
    done = subprocess.run(api, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "recall@20" in done.stdout and "JPQ swapped 2 ID tables" in done.stdout + done.stderr


def test_tables_command_lists_what_would_be_swapped(recbole_env, capsys, monkeypatch):
    from urecjpq_plugin.cli import main

    monkeypatch.setattr(sys, "argv", ["urecjpq"])
    assert main(["tables", "--model", "BPR", "--ksub", "128"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in out[2:4]}
    assert rows == {"user_embedding": ["944", "64", "user", "16", "128", "default", "rule"],
                    "item_embedding": ["1683", "64", "item", "16", "128", "default", "rule"]}
    before, after = (int(n.replace(",", "")) for n in out[-1].split("parameters ")[1].split(" (")[0].split(" -> "))
    assert before - after == (944 + 1683 - 2 * 128) * 64  # each table: rows x 64 -> 128 sub-ids x 64
    yaml_file = os.path.join(os.getcwd(), "overrides.yaml")
    with open(yaml_file, "w") as fh:
        fh.write("jpq_table_overrides: {item: {ksub: 512, M: 8}}\n")
    assert main(["tables", "--model", "BPR", "--ksub", "128", "--config-files", yaml_file]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[3].split()[:6] == ["item_embedding", "1683", "64", "item", "8", "512"]
    before, after = (int(n.replace(",", "")) for n in out[-1].split("parameters ")[1].split(" (")[0].split(" -> "))
    assert before - after == (944 - 128) * 64 + (1683 - 512) * 64
    assert main(["tables", "--model=Pop"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("urecjpq tables: error: model Pop has no ID table") and len(err.splitlines()) == 1


def test_a_comma_separated_inter_file_is_one_line(tmp_path, monkeypatch, capsys, recbole_env):
    monkeypatch.setattr(sys, "argv", ["urecjpq-recbole"])
    folder = tmp_path / "data" / "mine"
    folder.mkdir(parents=True)
    (folder / "mine.inter").write_text("user_id,item_id\n1,2\n")
    code = cli_main(["--model=BPR", "--dataset=mine", f"--data_path={tmp_path / 'data'}", "--jpq", "--epochs=1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "mine.inter: header 'user_id,item_id' is not RecBole's atomic format" in err


@pytest.mark.parametrize("model_name", ["BPR", "LightGCN"])
def test_host_built_model_pickles_and_deep_copies(model_name, recbole_env):
    """A compressed model built by the host (a same-named subclass; BPR with its PQ full-sort route) survives
    pickle and deepcopy: same class, same scores, and the copy still refuses an uncompressed state."""
    import copy
    import pickle

    from urecjpq_plugin.apply import JPQCheckpointError

    from .test_recbole_models import build

    config, model, train, valid, test = build(model_name, {**recbole_env, "jpq": True, "jpq_ksub": 64})
    model.eval()
    interaction = next(iter(test))[0]
    with torch.no_grad():
        expected = model.full_sort_predict(interaction)
    if model_name == "BPR":
        assert getattr(model, "_urecjpq_pq_full_sort", None) == "BPR"
    for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert type(clone) is type(model) and clone is not model
        assert type(clone.item_embedding).__name__ == "JPQEmbedding"
        with torch.no_grad():
            torch.testing.assert_close(clone.full_sort_predict(interaction), expected)
        config["jpq"] = False
        plain = type(model).__mro__[1](config, train._dataset)
        config["jpq"] = True
        with pytest.raises(JPQCheckpointError):
            clone.load_state_dict(plain.state_dict())
