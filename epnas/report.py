"""``epnas report``: one self-contained HTML page (and its PNGs) from any search's store.

``write_report(store, out)`` reads the history, the summary, the search file (for the
constraints) and the policy updates (``state/updates/``) and writes into ``out``:

* ``children.png``  validation accuracy and reward of every child in training order
  (feasible, infeasible, failed), with the best feasible accuracy so far;
* ``feasible.png``  feasible children per episode;
* ``pareto.png``    validation accuracy against each constrained metric, the Pareto front
  of the feasible children and the constraint's bound drawn;
* ``best.png``      the best feasible network (else the best) drawn as a diagram;
* ``policy.png``    policy loss and entropy per episode (strategies that learn);
* ``report.html``   every plot inlined (base64), the top-K table and the summary.

Plots are matplotlib (the ``[report]`` extra); no network access, no JavaScript but one line
that marks the page rendered once every image has decoded.
"""

from __future__ import annotations

import base64
import html
import io
import pathlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from epnas.checkpoint import SEARCH_FILE, SUMMARY, UPDATES_PREFIX, read_history
from epnas.errors import CorruptState, EpnasError
from epnas.records import ChildRecord, SearchSummary, ranked_children
from epnas.spec import load_search
from epnas.store import Store, StoreError, StoreNotFound, join_uri

METRIC_KEYS = {"modelSize": "params", "flops": "flops", "computeIntensity": "compute_intensity"}
METRIC_LABELS = {"modelSize": "parameters", "flops": "FLOPs", "computeIntensity": "compute intensity (FLOPs/byte)"}
TOP_K = 10
SHORT = {
    "channels": "channels",
    "width": "width",
    "freq_width": "freq width",
    "stride_time": "stride t",
    "stride_freq": "stride f",
    "activation": "",
    "directions": "directions",
    "dilation": "dilation",
    "keep": "keep",
}


class ReportError(EpnasError, RuntimeError):
    """Nothing to report (no history; the message says where it looked), or the ``[report]``
    extra is missing (it says what to install).  A fault, exit 1."""

    reason = "ReportError"


@dataclass
class Report:
    """What ``write_report`` wrote: the HTML file and the PNGs, in page order."""

    html: pathlib.Path
    images: list[pathlib.Path]


def write_report(store: Store, out: pathlib.Path) -> Report:
    """Write ``report.html`` and its PNGs for the search rooted at ``store`` into ``out``.

    Raises ``ReportError`` when there is no history or matplotlib (the ``[report]`` extra) is
    missing, ``CorruptState`` when a file it reads is damaged."""
    try:
        import matplotlib
    except ImportError as err:
        raise ReportError(
            f"the [report] extra is needed ({err.name} is missing): pip install 'epnas[report]'"
        ) from None

    matplotlib.use("Agg")
    records = [ChildRecord.from_json(r) for r in read_history(store, 10**9)]
    if not records:
        raise ReportError(f"no search history under {store.uri}")
    summary = _optional_json(store, SUMMARY) or {}
    constraints = _constraints(store)
    updates = sorted(
        (_optional_json(store, key) or {} for key in store.list(UPDATES_PREFIX)), key=lambda u: u.get("episode", 0)
    )
    ranked = ranked_children(records)
    best = ranked[0] if ranked else None
    out.mkdir(parents=True, exist_ok=True)
    figures = [
        ("children.png", "Every child", children_figure(records)),
        ("feasible.png", "Feasible children per episode", feasible_figure(records)),
    ]
    if constraints:
        figures.append(("pareto.png", "Accuracy against the constrained metrics", pareto_figure(records, constraints)))
    if best is not None:
        figures.append(
            ("best.png", f"Best {'feasible ' if best.feasible else ''}network: {best.child}", arch_figure(best.arch))
        )
    if updates:
        figures.append(("policy.png", "Policy updates", policy_figure(updates)))
    images, sections = [], []
    for name, title, figure in figures:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
        matplotlib.pyplot.close(figure)
        (out / name).write_bytes(buffer.getvalue())
        images.append(out / name)
        encoded = base64.b64encode(buffer.getvalue()).decode()
        sections.append(
            f'<h2>{html.escape(title)}</h2>\n<img alt="{html.escape(title)}" src="data:image/png;base64,{encoded}">'
        )
    page = _page(summary, store.uri, records, ranked[:TOP_K], constraints, sections)
    (out / "report.html").write_text(page)
    return Report(out / "report.html", images)


def _optional_json(store: Store, key: str) -> Any:
    try:
        return store.get_json(key)
    except StoreNotFound:
        return None
    except StoreError as err:
        raise CorruptState(f"{join_uri(store.uri, key)} is damaged: {err}") from None


def _constraints(store: Store) -> list[dict[str, Any]]:
    try:
        spec = load_search(store.get_bytes(SEARCH_FILE), source=join_uri(store.uri, SEARCH_FILE)).spec
    except StoreNotFound:
        return []
    return [{"metric": c.metric, "min": c.min, "max": c.max} for c in spec.constraints]


# ---------------------------------------------------------------- figures


def children_figure(records: Sequence[ChildRecord]):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6))
    xs = range(len(records))
    groups = (
        ("feasible", "tab:green", "o", lambda r: r.status != "failed" and r.feasible),
        ("infeasible", "tab:gray", "o", lambda r: r.status != "failed" and not r.feasible),
        ("failed", "tab:red", "x", lambda r: r.status == "failed"),
    )
    for label, colour, marker, test in groups:
        points = [(i, r.val_accuracy) for i, r in zip(xs, records) if test(r)]
        if points:
            ax.scatter(
                [x for x, _ in points],
                [y for _, y in points],
                s=18,
                c=colour,
                marker=marker,
                label=f"{label} ({len(points)})",
            )
    ax.plot(list(xs), [r.reward for r in records], lw=0.8, c="tab:blue", alpha=0.6, label="reward")
    best, running = None, []
    for r in records:
        if r.status != "failed" and r.feasible:
            best = r.val_accuracy if best is None else max(best, r.val_accuracy)
        running.append(best)
    ax.step(
        list(xs),
        [float("nan") if b is None else b for b in running],
        where="post",
        c="black",
        lw=1.2,
        label="best feasible so far",
    )
    ax.set_xlabel("child (training order)")
    ax.set_ylabel("validation accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, loc="lower right")
    return fig


def feasible_figure(records: Sequence[ChildRecord]):
    import matplotlib.pyplot as plt

    episodes = sorted({r.episode for r in records})
    fig, ax = plt.subplots(figsize=(8, 2.6))
    feasible = [sum(r.feasible and r.status != "failed" for r in records if r.episode == e) for e in episodes]
    total = [sum(1 for r in records if r.episode == e) for e in episodes]
    ax.bar(episodes, total, color="lightgray", label="children")
    ax.bar(episodes, feasible, color="tab:green", label="feasible")
    ax.set_xlabel("episode")
    ax.set_ylabel("children")
    ax.set_xticks(episodes)
    ax.legend(fontsize=7)
    return fig


def pareto_front(points: Sequence[tuple[float, float]], lower_is_better: bool = True) -> list[tuple[float, float]]:
    """The points ``(cost, accuracy)`` no other point beats on both (lower cost — or higher, when
    ``lower_is_better`` is false — and higher accuracy), sorted by cost."""
    ordered = sorted(points, key=lambda p: (p[0] if lower_is_better else -p[0], -p[1]))
    front: list[tuple[float, float]] = []
    for cost, acc in ordered:
        if not front or acc > front[-1][1]:
            front.append((cost, acc))
    return sorted(front)


def pareto_figure(records: Sequence[ChildRecord], constraints: Sequence[dict[str, Any]]):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(constraints), figsize=(4 * len(constraints), 3.4), squeeze=False)
    done = [r for r in records if r.status != "failed" and r.metrics]
    for ax, c in zip(axes[0], constraints):
        key = METRIC_KEYS[c["metric"]]
        for label, colour, test in (("feasible", "tab:green", True), ("infeasible", "tab:gray", False)):
            points = [(r.metrics[key], r.val_accuracy) for r in done if r.feasible is test]
            if points:
                ax.scatter(*zip(*points), s=14, c=colour, label=label)
        front = pareto_front(
            [(r.metrics[key], r.val_accuracy) for r in done if r.feasible], lower_is_better=c["max"] is not None
        )
        if front:
            ax.step(
                *zip(*front), where="post" if c["max"] is not None else "pre", c="black", lw=1, label="Pareto front"
            )
        for bound, style in ((c["min"], "--"), (c["max"], "-")):
            if bound is not None:
                ax.axvline(bound, c="tab:red", ls=style, lw=1, label=f"{'min' if style == '--' else 'max'} {bound:g}")
        ax.set_xscale("log")
        ax.set_xlabel(METRIC_LABELS[c["metric"]])
        ax.set_ylabel("validation accuracy")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def arch_boxes(arch: dict) -> tuple[list[str], list[tuple[int, int]]]:
    """Box labels (input first) and skip edges ``(from, to)`` of a network's diagram."""
    if "layers" in arch:
        labels = ["input"]
        skips = []
        for i, layer in enumerate(arch["layers"], 1):
            fields = [
                f"{SHORT.get(k, k)} {v}".strip()
                for k, v in layer.items()
                if k not in ("op", "src1", "src2", "merge") and v is not None
            ]
            if layer.get("src2") is not None:
                fields.append(f"{layer.get('merge', 'add')} ← {layer['src2']}")
            labels.append("\n".join([layer["op"], *fields]))
            if layer.get("src1", i - 1) != i - 1:
                skips.append((layer["src1"], i))
            if layer.get("src2") is not None:
                skips.append((layer["src2"], i))
        return labels, skips
    branches = arch.get("cell", {}).get("branches", [])
    labels = ["cell input"] + [f"{b['type']}\nchannels {b['channels']}\nwidth {b['width']}" for b in branches]
    return labels, [(b["src1"], i) for i, b in enumerate(branches, 1) if b.get("src1", i - 1) != i - 1]


def arch_text(arch: dict) -> str:
    """The network on one line, the diagram's boxes in order: ``conv2d(channels 16, width 3, relu) →
    maxpool(width 2)``; a skip or merge input is written ``merge ← i`` / ``from i`` (i: 0 = input)."""
    labels, skips = arch_boxes(arch)
    parts = []
    for i, label in enumerate(labels[1:], 1):
        op, *fields = label.split("\n")
        fields += [f"from {src}" for src, to in skips if to == i and not any(f.endswith(f"← {src}") for f in fields)]
        parts.append(f"{op}({', '.join(f for f in fields if f)})" if any(fields) else op)
    return " → ".join(parts) or "(empty)"


def arch_figure(arch: dict):
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    labels, skips = arch_boxes(arch)
    height = 0.3 + 0.22 * max(label.count("\n") + 1 for label in labels)
    fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(labels)), 1.2 + height))
    for i, label in enumerate(labels):
        ax.add_patch(
            FancyBboxPatch(
                (i * 2, 0), 1.5, height, boxstyle="round,pad=0.05", fc="#e8f0fe" if i else "#eeeeee", ec="#3367d6"
            )
        )
        ax.text(i * 2 + 0.75, height / 2, label, ha="center", va="center", fontsize=7)
        if i:
            ax.add_patch(
                FancyArrowPatch(
                    ((i - 1) * 2 + 1.5, height / 2), (i * 2, height / 2), arrowstyle="->", mutation_scale=10
                )
            )
    for src, dst in skips:
        ax.add_patch(
            FancyArrowPatch(
                (src * 2 + 0.75, height + 0.05),
                (dst * 2 + 0.75, height + 0.05),
                connectionstyle="arc3,rad=-0.3",
                arrowstyle="->",
                mutation_scale=10,
                color="tab:orange",
            )
        )
    ax.set_xlim(-0.3, len(labels) * 2)
    ax.set_ylim(-0.2, height + 1.0)
    ax.axis("off")
    return fig


def policy_figure(updates: Sequence[dict[str, Any]]):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 2.6))
    episodes = [u.get("episode", i) for i, u in enumerate(updates)]
    for key, colour in (("loss", "tab:blue"), ("entropy", "tab:purple")):
        values = [u.get(key) for u in updates]
        if any(v is not None for v in values):
            ax.plot(episodes, [float("nan") if v is None else v for v in values], marker="o", c=colour, label=key)
    ax.set_xlabel("episode")
    ax.legend(fontsize=7)
    return fig


# ---------------------------------------------------------------- page


def _page(
    summary: SearchSummary | dict[str, Any],  # {} when the search wrote none
    uri: str,
    records: Sequence[ChildRecord],
    top: Sequence[ChildRecord],
    constraints: Sequence[dict[str, Any]],
    sections: Sequence[str],
) -> str:
    e = html.escape
    name = summary.get("search") or uri.rstrip("/").rsplit("/", 1)[-1]
    counts = {s: sum(r.status == s for r in records) for s in ("succeeded", "cached", "failed")}
    rows = "\n".join(
        f"<tr><td>{i}</td><td>{e(r.child)}</td><td>{'yes' if r.feasible else 'no'}</td><td>{r.val_accuracy:.4f}</td>"
        f"<td>{r.test_accuracy:.4f}</td><td>{r.metrics.get('params', 0):,}</td><td>{r.metrics.get('flops', 0):,}</td>"
        f"<td>{r.metrics.get('compute_intensity', 0):.2f}</td></tr>"
        for i, r in enumerate(top, 1)
    )
    limits = (
        ", ".join(
            " and ".join(
                s
                for s in (
                    f"{c['metric']} ≥ {c['min']:g}" if c["min"] is not None else "",
                    f"{c['metric']} ≤ {c['max']:g}" if c["max"] is not None else "",
                )
                if s
            )
            for c in constraints
        )
        or "none"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>EPNAS report: {e(name)}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}img{{max-width:100%}}</style>
</head><body>
<h1>EPNAS report: {e(name)}</h1>
<p>Store <code>{e(uri)}</code>; phase <b>{e(str(summary.get("phase", "unknown")))}</b>{e(": " + summary["reason"]) if summary.get("reason") else ""}.
{len(records)} children: {counts["succeeded"]} trained, {counts["cached"]} served from cache, {counts["failed"]} failed;
{sum(r.feasible and r.status != "failed" for r in records)} feasible. Constraints: {e(limits)}.</p>
<h2>Top {len(top)} children (feasible first)</h2>
<table><tr><th>#</th><th>child</th><th>feasible</th><th>val acc</th><th>test acc</th><th>params</th><th>FLOPs</th><th>FLOPs/B</th></tr>
{rows}
</table>
{chr(10).join(sections)}
<script>window.addEventListener("load", () => document.body.dataset.rendered = [...document.images].filter(i => i.complete && i.naturalWidth > 0).length)</script>
</body></html>
"""
