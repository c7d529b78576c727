"""Valid recall@20 per epoch on Baby (harness LightGCN, RecBole's settings): uncompressed, compressed with plain
rows (tenth round) and with unit rows (eleventh). Reads the round records, writes curves_unit_rows.png.

    python plot_unit_rows.py
"""
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

RUNS = {  # label -> (records, run names: seed 2020 first)
    "uncompressed": ("results_round10.jsonl", ["baby_full40_rerun"]),
    "compressed, plain rows": ("results_round10.jsonl", ["baby_c0_rerun", "baby_c0_s1", "baby_c0_s2"]),
    "compressed, unit rows": ("results_round11.jsonl", ["baby_unit1", "baby_unit1_s1", "baby_unit1_s2"]),
}


def main() -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for (label, (path, names)), color in zip(RUNS.items(), ("black", "tab:red", "tab:blue")):
        records = {r["name"]: r for r in map(json.loads, open(path))}
        for k, name in enumerate(names):
            curve = records[name]["curve"]
            ax.plot(range(len(curve)), curve, color=color, lw=2 if k == 0 else 0.8, alpha=1 if k == 0 else 0.5,
                    label=label if k == 0 else None)
    ax.set_xlabel("epoch"); ax.set_ylabel("valid recall@20")
    ax.set_title("LightGCN on Amazon Baby (seed 2020 bold, seeds 1 and 2 thin)")
    ax.legend(); ax.grid(alpha=0.3); fig.tight_layout()
    fig.savefig("curves_unit_rows.png", dpi=110)


if __name__ == "__main__":
    main()
