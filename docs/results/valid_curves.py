"""Validation curves of MMRec bench runs: each run's per-epoch valid score, read from its working folder's log.

A run's working folder (``runs/<id>/``, with MMRec's ``child.log``) is not committed, only its record; this keeps
the curve beside the record: ``curves.json`` in each folder given, ``{run id: [valid score per evaluation]}``.

    python docs/results/valid_curves.py docs/results/mmrec-tiktok-mgcn-patience50
"""
import glob
import json
import os
import re
import sys

SCORE = re.compile(r"valid_score: ([0-9.]+)")


def curves(folder: str) -> dict:
    found = {}
    for log in sorted(glob.glob(os.path.join(folder, "runs", "*", "child.log"))):
        with open(log, encoding="utf-8") as f:
            found[os.path.basename(os.path.dirname(log))] = [float(s) for s in SCORE.findall(f.read())]
    return found


def main() -> None:
    for folder in sys.argv[1:]:
        found = curves(folder)
        if not found:
            sys.exit(f"{folder}: no runs/*/child.log to read")
        old = {}
        path = os.path.join(folder, "curves.json")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                old = json.load(f)
        with open(path, "w", encoding="utf-8") as f:
            json.dump({**old, **found}, f, indent=1)
        for run, scores in found.items():
            best = max(range(len(scores)), key=scores.__getitem__)
            print(f"{run}: {len(scores)} evaluations, best {scores[best]:.4f} at evaluation {best}")


if __name__ == "__main__":
    main()
