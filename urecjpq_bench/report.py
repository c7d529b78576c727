"""Turn run records into the bench's outputs: a CSV of all runs, a markdown table, PNG plots.

Every compressed run is compared with its model's uncompressed run (same seed, config, budget):
``rel_<measure> = (jpq - base) / base``, so -0.02 on recall@20 is a 2 % drop, -0.999 on ID-table
parameters a 99.9 % reduction. With several seeds the markdown table shows each cell's mean +- std
over seeds and the relative change of the means (the CSV keeps one row per run).
"""

from __future__ import annotations

import csv
from pathlib import Path
from statistics import mean, stdev

from urecjpq_bench.hosts import CTR_METRICS, METRICS

# The two metrics the summary and plots show, per evaluation: top-k ranking, or labelled CTR
# (RecBole's context-aware models: AUC / LogLoss instead of recall / NDCG).
HEADLINE = {"ranking": ("recall@20", "ndcg@20"), "ctr": ("auc", "logloss")}
COLUMNS = {"ranking": METRICS, "ctr": CTR_METRICS}
LABELS = {"auc": "AUC", "logloss": "LogLoss"}
MEASURES = (
    *METRICS,
    *CTR_METRICS,
    "params_id_tables",
    "params_features",
    "params_total",
    "checkpoint_bytes",
    "state_dict_bytes",
    "peak_rss_bytes",
    "seconds_per_epoch",
    "cpu_seconds_per_epoch",
    "cpu_seconds_per_eval",
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
        "seed": record["spec"].get("seed", record["spec"].get("overrides", {}).get("seed", "")),
        "variant": "jpq" if jpq else "base",
        "jpq_M": jpq.get("M", ""),
        "jpq_ksub": jpq.get("ksub", ""),
        "jpq_code_assign": jpq.get("code_assign", ""),
        "jpq_targets": "+".join(jpq.get("targets", ())),
        "status": record.get("status", ""),
    }
    metrics, params = record.get("metrics", {}), record.get("params", {})
    for m in (*METRICS, *CTR_METRICS):
        row[m] = metrics.get(m, "")
    for k in ("id_tables", "features", "total"):
        row[f"params_{k}"] = params.get(k, "")
    for k in ("checkpoint_bytes", "state_dict_bytes", "peak_rss_bytes", "seconds_per_epoch", "cpu_seconds_per_epoch",
              "cpu_seconds_per_eval", "epochs", "wall_seconds"):
        row[k] = record.get(k, "")
    distinct = record.get("distinct_codes") or {}
    row["distinct_codes_user"] = distinct.get("user", "")
    row["distinct_codes_item"] = distinct.get("item", "")
    return row


def relative(value, base):
    if value in ("", None) or base in ("", None) or base == 0:
        return ""
    return (value - base) / base


def build_rows(records: list[dict]) -> list[dict]:
    """Rows of finished runs, each jpq row with ``rel_*`` against its model's base row."""
    rows = [flatten(r) for r in records if r.get("status") == "ok"]
    base = {(r["model"], r["seed"]): r for r in rows if r["variant"] == "base"}
    for row in rows:
        ref = base.get((row["model"], row["seed"]))
        for m in MEASURES:
            row[f"rel_{m}"] = relative(row[m], ref[m]) if ref and row["variant"] == "jpq" else ""
    order = {"base": 0, "jpq": 1}
    return sorted(rows, key=lambda r: (r["model"], order[r["variant"]], str(r["jpq_M"]).zfill(4),
                                       str(r["jpq_ksub"]).zfill(6), r["run_id"]))


def aggregate(rows: list[dict]) -> list[dict]:
    """One row per (model, setting) over seeds: ``<m>`` the mean, ``sd_<m>`` the std (0 for one seed),
    ``rel_<m>`` the relative change of the means against the model's uncompressed mean (its seeds)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], _setting(r)), []).append(r)
    out = []
    for (model, setting), rs in groups.items():
        agg = {k: rs[0][k] for k in ("model", "variant", "jpq_M", "jpq_ksub", "jpq_code_assign", "jpq_targets")}
        agg.update(setting=setting, seeds=len(rs))
        for m in (*MEASURES, "distinct_codes_user", "distinct_codes_item"):
            vals = [r[m] for r in rs if r[m] not in ("", None)]
            agg[m] = mean(vals) if vals else ""
            agg[f"sd_{m}"] = stdev(vals) if len(vals) > 1 else 0.0
        out.append(agg)
    base = {a["model"]: a for a in out if a["variant"] == "base"}
    for a in out:
        ref = base.get(a["model"])
        for m in MEASURES:
            a[f"rel_{m}"] = relative(a[m], ref[m]) if ref and a["variant"] == "jpq" else ""
    return out


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


def evaluations(rows: list[dict]) -> list[str]:
    """Which evaluations the runs report: "ranking" (recall/NDCG), "ctr" (AUC/LogLoss) or both."""
    found = [e for e, (first, _) in HEADLINE.items() if any(r.get(first) not in ("", None) for r in rows)]
    return found or ["ranking"]


def markdown(rows: list[dict], title: str = "") -> str:
    """Main table (mean +- std over seeds, change of the means vs uncompressed in brackets) plus the
    mean change per setting. Metric columns follow the runs: recall/NDCG, AUC/LogLoss, or both."""
    metric_columns = [m for e in evaluations(rows) for m in COLUMNS[e]]
    # CPU seconds (MMRec runs record them): comparable even where runs shared the cores, unlike s/epoch
    cpu = any(r.get("cpu_seconds_per_epoch") not in ("", None) for r in rows)
    head = [
        "model", "setting", "seeds", *(LABELS.get(m, m) for m in metric_columns), "ID-table params", "total params",
        "checkpoint", "peak RSS", "s/epoch", *(("CPU s/epoch", "CPU s/eval") if cpu else ()), "epochs",
        "distinct codes (user/item)",
    ]
    lines = ([f"### {title}", ""] if title else []) + ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in aggregate(rows):
        def cell(key, fmt):
            text = fmt(r[key])
            if r["seeds"] > 1 and key in metric_columns and text:
                text += f" ± {_num(r['sd_' + key])}"
            rel = r.get(f"rel_{key}", "")
            return f"{text} ({_pct(rel)})" if rel != "" else text

        distinct = "/".join(f"{r[k] * 100:.1f}%" for k in ("distinct_codes_user", "distinct_codes_item") if r[k] != "")

        lines.append("| " + " | ".join([
            r["model"], r["setting"], str(r["seeds"]),
            *(cell(m, _num) for m in metric_columns),
            cell("params_id_tables", lambda v: f"{v:,.0f}"), cell("params_total", lambda v: f"{v:,.0f}"),
            cell("checkpoint_bytes", _size), cell("peak_rss_bytes", _size),
            cell("seconds_per_epoch", lambda v: _num(v, 2)),
            *((cell("cpu_seconds_per_epoch", lambda v: _num(v, 2)), cell("cpu_seconds_per_eval", lambda v: _num(v, 2)))
              if cpu else ()),
            _num(r["epochs"], 1), distinct or "-",
        ]) + " |")
    for evaluation in evaluations(rows):
        summary = mean_changes(rows, evaluation)
        if not summary:
            continue
        first, second = (LABELS.get(m, m) for m in HEADLINE[evaluation])
        # LogLoss: lower is better, so its "worst" is the largest increase
        worst = "worst" if evaluation == "ranking" else "worst (highest)"
        lines += ["", "Mean relative change against uncompressed, over models (of the means over seeds):", "",
                  f"| setting | models | {first} | {second} | worst {first} | {worst} {second} | ID-table params | "
                  "checkpoint |", "|---|---|---|---|---|---|---|---|"]
        a, b = HEADLINE[evaluation]
        for setting, s in summary.items():
            lines.append(f"| {setting} | {s['models']} | {_pct(s[a])} | {_pct(s[b])} | "
                         f"{_pct(s['worst_' + a])} | {_pct(s['worst_' + b])} | "
                         f"{_pct(s['params_id_tables'])} | {_pct(s['checkpoint_bytes'])} |")
    return "\n".join(lines) + "\n"


def mean_changes(rows: list[dict], evaluation: str = "ranking") -> dict[str, dict]:
    """Per JPQ setting: the mean (and worst) over models of each model's relative change of the means,
    for the models of one evaluation ("ranking" or "ctr"; LogLoss's worst is its largest change)."""
    first, second = HEADLINE[evaluation]
    groups: dict[str, list[dict]] = {}
    for a in aggregate(rows):
        if a["variant"] == "jpq" and a[f"rel_{first}"] != "":
            groups.setdefault(a["setting"], []).append(a)
    out = {}
    for setting, rs in groups.items():
        out[setting] = {"models": len(rs)}
        for m in (first, second, "params_id_tables", "checkpoint_bytes"):
            vals = [r[f"rel_{m}"] for r in rs if r[f"rel_{m}"] != ""]
            out[setting][m] = mean(vals) if vals else ""
            out[setting][f"worst_{m}"] = (max if m == "logloss" else min)(vals) if vals else ""
    return out


def _sweep_plot(ax, cells: list[dict], metric: str, axis: str, colors: dict, fixed: tuple[str, ...]) -> None:
    """Lines of ``metric`` (mean, std as error bars) against ``axis`` per model and fixed settings;
    each model's uncompressed mean as a dashed line."""
    for model, color in colors.items():
        lines: dict[tuple, list] = {}
        for a in cells:
            if a["model"] == model and a["variant"] == "jpq" and str(a[axis]).isdigit():  # not M=auto
                lines.setdefault(tuple(a[k] for k in fixed), []).append((int(a[axis]), a[metric], a[f"sd_{metric}"]))
        for key, pts in sorted(lines.items(), key=lambda kv: str(kv[0])):
            pts.sort()
            label = model if len(lines) == 1 else f"{model} " + " ".join(map(str, key))
            xs, ys, sds = zip(*pts)
            ax.errorbar(xs, ys, yerr=sds, marker="^", color=color, label=label, capsize=2)
        base = [a[metric] for a in cells if a["model"] == model and a["variant"] == "base"]
        if base:
            ax.axhline(base[0], color=color, linestyle="--", linewidth=1)
    ax.set_xscale("log", base=2)
    ax.set_ylabel(f"test {LABELS.get(metric, metric)}")
    ax.grid(alpha=0.3)


def plot(rows: list[dict], folder: Path) -> list[Path]:
    """PNG plots of the cells (means over seeds): accuracy against trainable parameters, against M,
    against ksub, and against checkpoint bytes (Pareto: jpq points, uncompressed as dashed lines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    cells = aggregate(rows)
    metrics = HEADLINE[evaluations(rows)[0]]  # a mixed bench plots recall/NDCG; its CTR models stay in the tables
    cells = [a for a in cells if a[metrics[0]] not in ("", None)]
    models = sorted({a["model"] for a in cells})
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(models)}
    written = []

    def save(fig, name: str, title: str) -> None:
        fig.suptitle(title)
        fig.tight_layout()
        written.append(folder / name)
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)

    for name, x_key, x_label in (("accuracy_vs_params.png", "params_total", "trainable parameters"),
                                 ("accuracy_vs_checkpoint.png", "checkpoint_bytes", "checkpoint bytes")):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for ax, metric in zip(axes, metrics):
            for m in models:
                jpq = [(a[x_key], a[metric]) for a in cells if a["model"] == m and a["variant"] == "jpq"]
                if jpq:
                    ax.scatter(*zip(*jpq), marker="^", color=colors[m], s=40, label=f"{m} jpq")
                for a in cells:
                    if a["model"] == m and a["variant"] == "base":
                        ax.scatter([a[x_key]], [a[metric]], marker="o", color=colors[m], s=40,
                                   label=f"{m} uncompressed")
                        ax.axhline(a[metric], color=colors[m], linestyle="--", linewidth=1)
            ax.set_xscale("log")
            ax.set_xlabel(x_label)
            ax.set_ylabel(f"test {LABELS.get(metric, metric)}")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7, ncol=2)
        save(fig, name, f"accuracy against {x_label} (circle/dashed: uncompressed, triangle: jpq; mean over seeds)")

    for name, axis, fixed in (("accuracy_vs_M.png", "jpq_M", ("jpq_ksub", "jpq_code_assign", "jpq_targets")),
                              ("accuracy_vs_ksub.png", "jpq_ksub", ("jpq_M", "jpq_code_assign", "jpq_targets"))):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for ax, metric in zip(axes, metrics):
            _sweep_plot(ax, cells, metric, axis, colors, fixed)
            ax.set_xlabel("M (splits per code)" if axis == "jpq_M" else "ksub (sub-ids per split)")
        if axes[0].get_legend_handles_labels()[0]:
            axes[0].legend(fontsize=6)
        save(fig, name, f"jpq accuracy against {'M' if axis == 'jpq_M' else 'ksub'} "
             "(dashed: uncompressed; bars: std over seeds)")
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
