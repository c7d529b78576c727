"""RecBole's own Python API with URecJPQ active: one added line.

    python examples/recbole_api.py --epochs 2
"""

import argparse
import os

import recbole
from recbole.quick_start import run_recbole

import urecjpq_plugin

urecjpq_plugin.activate("recbole")  # the one line: models built from here on honour jpq: true

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="BPR")
    parser.add_argument("--epochs", type=int, default=300)
    args = parser.parse_args()
    result = run_recbole(
        model=args.model,
        dataset="ml-100k",
        config_file_list=[os.path.join(os.path.dirname(__file__), "recbole_jpq.yaml")],
        config_dict={
            "data_path": os.path.join(os.path.dirname(recbole.__file__), "dataset_example"),
            "epochs": args.epochs,
        },
    )
    print({k: result["test_result"][k] for k in ("recall@20", "ndcg@20")})
