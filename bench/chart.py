"""PNG chart: speedup of every candidate over ``jax.lax`` per shape, forward and fwd+bwd."""

from __future__ import annotations

from pathlib import Path

from bench.summary import LAX


def write(run: dict, path: Path) -> Path | None:
    """Draws the chart to ``path``; returns None (and draws nothing) without matplotlib or lax."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = {(r["shape"], r["candidate"]): r for r in run["results"] if r["check_ok"]}
    shapes = [s["key"] for s in run["shapes"]]
    if not any((s, LAX) in rows for s in shapes):
        return None
    names = [n for n in dict.fromkeys(r["candidate"] for r in run["results"]) if n != LAX]
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 1.3 * len(shapes)), 8), sharex=True)
    for ax, phase, title in zip(axes, ("fwd_ms", "fwd_bwd_ms"), ("forward", "forward + backward")):
        _bars(ax, rows, shapes, names, phase)
        ax.set_title(f"{title}: speedup over jax.lax.conv_general_dilated_local (log scale)")
    axes[0].legend(fontsize=7, ncol=3)
    axes[1].set_xticks(range(len(shapes)), shapes, rotation=30)
    fig.suptitle(f"jlocalconv bench, {run['meta']['backend']}, {run['meta']['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _bars(ax, rows, shapes, names, field) -> None:
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        xs, ys = [], []
        for j, s in enumerate(shapes):
            base, mine = rows.get((s, LAX)), rows.get((s, name))
            if base and mine:
                xs.append(j - 0.4 + (i + 0.5) * width)
                ys.append(base[field] / mine[field])
        ax.bar(xs, ys, width, label=name)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_ylabel("x faster than lax")
