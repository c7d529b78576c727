"""Turn run records into the bench's outputs: a CSV of all runs, a markdown table, PNG plots.

Every compressed run is compared with its model's uncompressed run (same seed, config, budget):
``rel_<measure> = (jpq - base) / base``, so -0.02 on recall@20 is a 2 % drop, -0.999 on ID-table
parameters a 99.9 % reduction.
"""

from __future__ import annotations

import csv
from pathlib import Path
from statistics import mean

from .hosts import METRICS

MEASURES = (
    *METRICS,
    "params_id_tables",
    "params_features",
    "params_total",
    "checkpoint_bytes",
    "state_dict_bytes",
    "peak_rss_bytes",
    "seconds_per_epoch",
    "epochs",
)
SETTING_COLUMNS = ("jpq_M", "jpq_ksub", "jpq_code_assign", "jpq_targets")


def flatten(record: dict) -> dict:
    """One CSV row: identity, JPQ settings, measurements."""
    jpq = record.get("jpq") or {}
    row = {
        "run_id": record["run_id"],
        "model": record["spec"]["model"],
        "dataset": record["spec"]["dataset"],
        "variant": "jpq" if jpq else "base",
        "jpq_M": jpq.get("M", ""),
        "jpq_ksub": jpq.get("ksub", ""),
        "jpq_code_assign": jpq.get("code_assign", ""),
        "jpq_targets": "+".join(jpq.get("targets", ())),
        "status": record.get("status", ""),
    }
    metrics, params = record.get("metrics", {}), record.get("params", {})
    for m in METRICS:
        row[m] = metrics.get(m, "")
    for k in ("id_tables", "features", "total"):
        row[f"params_{k}"] = params.get(k, "")
    for k in ("checkpoint_bytes", "state_dict_bytes", "peak_rss_bytes", "seconds_per_epoch", "epochs", "wall_seconds"):
        row[k] = record.get(k, "")
    return row


def relative(value, base):
    if value in ("", None) or base in ("", None) or base == 0:
        return ""
    return (value - base) / base


def build_rows(records: list[dict]) -> list[dict]:
    """Rows of finished runs, each jpq row with ``rel_*`` against its model's base row."""
    rows = [flatten(r) for r in records if r.get("status") == "ok"]
    base = {r["model"]: r for r in rows if r["variant"] == "base"}
    for row in rows:
        ref = base.get(row["model"])
        for m in MEASURES:
            row[f"rel_{m}"] = relative(row[m], ref[m]) if ref and row["variant"] == "jpq" else ""
    order = {"base": 0, "jpq": 1}
    return sorted(rows, key=lambda r: (r["model"], order[r["variant"]], str(r["jpq_M"]).zfill(4), r["run_id"]))


def write_csv(rows: list[dict], path: Path) -> None:
    columns = list(rows[0]) if rows else ["run_id"]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _num(value, digits: int = 4) -> str:
    return "" if value in ("", None) else f"{value:.{digits}f}"


def _pct(value) -> str:
    return "" if value in ("", None) else f"{value * 100:+.1f}%"


def _size(n) -> str:
    if n in ("", None):
        return ""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _setting(row: dict) -> str:
    if row["variant"] == "base":
        return "uncompressed"
    return f"jpq M={row['jpq_M']} ksub={row['jpq_ksub']} {row['jpq_code_assign']} {row['jpq_targets']}"


def markdown(rows: list[dict], title: str = "") -> str:
    """Main table (values, and change vs uncompressed in brackets) plus mean change per setting."""
    head = [
        "model", "setting", "recall@10", "recall@20", "ndcg@10", "ndcg@20", "ID-table params", "total params",
        "checkpoint", "peak RSS", "s/epoch", "epochs",
    ]
    lines = ([f"### {title}", ""] if title else []) + ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        def cell(key, fmt):
            text = fmt(r[key])
            rel = r.get(f"rel_{key}", "")
            return f"{text} ({_pct(rel)})" if rel != "" else text

        lines.append("| " + " | ".join([
            r["model"], _setting(r),
            cell("recall@10", _num), cell("recall@20", _num), cell("ndcg@10", _num), cell("ndcg@20", _num),
            cell("params_id_tables", lambda v: f"{v:,}"), cell("params_total", lambda v: f"{v:,}"),
            cell("checkpoint_bytes", _size), cell("peak_rss_bytes", _size),
            cell("seconds_per_epoch", lambda v: _num(v, 2)), str(r["epochs"]),
        ]) + " |")
    summary = mean_changes(rows)
    if summary:
        lines += ["", "Mean relative change against uncompressed, over models:", "",
                  "| setting | models | recall@20 | ndcg@20 | ID-table params | checkpoint |", "|---|---|---|---|---|---|"]
        for setting, s in summary.items():
            lines.append(f"| {setting} | {s['models']} | {_pct(s['recall@20'])} | {_pct(s['ndcg@20'])} | "
                         f"{_pct(s['params_id_tables'])} | {_pct(s['checkpoint_bytes'])} |")
    return "\n".join(lines) + "\n"


def mean_changes(rows: list[dict]) -> dict[str, dict]:
    """Per JPQ setting: the mean over models of each relative change (models lacking a base are skipped)."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r["variant"] == "jpq" and r["rel_recall@20"] != "":
            groups.setdefault(_setting(r), []).append(r)
    out = {}
    for setting, rs in groups.items():
        out[setting] = {"models": len(rs)}
        for m in ("recall@20", "ndcg@20", "params_id_tables", "checkpoint_bytes"):
            vals = [r[f"rel_{m}"] for r in rs if r[f"rel_{m}"] != ""]
            out[setting][m] = mean(vals) if vals else ""
    return out


def plot(rows: list[dict], folder: Path) -> list[Path]:
    """accuracy_vs_params.png (every run) and accuracy_vs_M.png (jpq runs, base as dashed line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    models = sorted({r["model"] for r in rows})
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(models)}
    written = []

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric in zip(axes, ("recall@20", "ndcg@20")):
        for m in models:
            for variant, marker in (("base", "o"), ("jpq", "^")):
                pts = [(r["params_total"], r[metric]) for r in rows if r["model"] == m and r["variant"] == variant]
                if pts:
                    xs, ys = zip(*pts)
                    ax.scatter(xs, ys, marker=marker, color=colors[m], s=40,
                               label=f"{m} {'uncompressed' if variant == 'base' else 'jpq'}")
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters")
        ax.set_ylabel(f"test {metric}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle("accuracy against trainable parameters (circle: uncompressed, triangle: jpq)")
    fig.tight_layout()
    written.append(folder / "accuracy_vs_params.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric in zip(axes, ("recall@20", "ndcg@20")):
        for m in models:
            base = [r[metric] for r in rows if r["model"] == m and r["variant"] == "base"]
            lines: dict[tuple, list] = {}
            for r in rows:
                if r["model"] == m and r["variant"] == "jpq":
                    lines.setdefault((r["jpq_ksub"], r["jpq_code_assign"], r["jpq_targets"]), []).append(
                        (int(r["jpq_M"]), r[metric]))
            for key, pts in sorted(lines.items()):
                pts.sort()
                label = m if len(lines) == 1 else f"{m} ksub={key[0]} {key[1]} {key[2]}"
                ax.plot(*zip(*pts), marker="^", color=colors[m], label=label)
            if base:
                ax.axhline(base[0], color=colors[m], linestyle="--", linewidth=1)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("M (splits per code)")
        ax.set_ylabel(f"test {metric}")
        ax.grid(alpha=0.3)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=7)
    fig.suptitle("jpq accuracy against M (dashed: uncompressed)")
    fig.tight_layout()
    written.append(folder / "accuracy_vs_M.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    return written


def write_reports(records: list[dict], out: Path, title: str = "") -> dict[str, Path]:
    """Rewrite ``results.csv``, ``results.md`` and ``plots/`` from ``records``; returns their paths."""
    rows = build_rows(records)
    paths = {"csv": out / "results.csv", "md": out / "results.md"}
    write_csv(rows, paths["csv"])
    paths["md"].write_text(markdown(rows, title))
    if rows:
        for path in plot(rows, out / "plots"):
            paths[path.stem] = path
    return paths
