"""Pictures a person would rather look at than read, logged as MLflow artifacts of the steps.

Each function draws one figure into `folder` and returns the PNG's path.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on batch machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, folder: Path, name: str) -> Path:
    path = Path(folder) / name
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def shared_sphere(users: np.ndarray, tracks: np.ndarray, episodes: np.ndarray, folder: Path, title: str) -> Path:
    """Users, tracks and episodes projected together onto the top-2 principal axes of their union."""
    groups = {"users": users, "tracks": tracks, "episodes": episodes}
    stacked = np.concatenate([g for g in groups.values() if len(g)])
    mean = stacked.mean(0)
    _, _, axes = np.linalg.svd(stacked - mean, full_matrices=False)
    fig, ax = plt.subplots(figsize=(6.5, 6))
    for (name, vectors), color in zip(groups.items(), ("#4c72b0", "#55a868", "#c44e52")):
        if len(vectors):
            xy = (vectors - mean) @ axes[:2].T
            ax.scatter(xy[:, 0], xy[:, 1], s=4, alpha=0.45, label=f"{name} ({len(vectors)})", color=color)
    ax.set_title(title)
    ax.set_xlabel("principal axis 1")
    ax.set_ylabel("principal axis 2")
    ax.legend(markerscale=4)
    return _save(fig, folder, "shared_sphere.png")


def codebook_usage(used: list[int], perplexity: list[float], codes_per_level: int, folder: Path,
                   bucket_sizes: np.ndarray | None = None) -> Path:
    """Used codes and usage perplexity per level against the codebook size; with bucket_sizes (items
    per distinct full code, before de-duplication) also how many codes hold 1, 2, 3... items."""
    levels = np.arange(len(used))
    fig, axes = plt.subplots(1, 2 if bucket_sizes is not None else 1, figsize=(11 if bucket_sizes is not None else 6, 3.5),
                             squeeze=False)
    ax = axes[0, 0]
    ax.bar(levels - 0.2, used, width=0.4, label="used codes")
    ax.bar(levels + 0.2, perplexity, width=0.4, label="perplexity")
    ax.axhline(codes_per_level, color="grey", linestyle="--", linewidth=1, label=f"K = {codes_per_level}")
    ax.set_xticks(levels, [f"level {i + 1}" for i in levels])
    ax.set_title("Semantic-ID codebook utilisation")
    ax.legend()
    if bucket_sizes is not None:
        sizes, codes = np.unique(bucket_sizes, return_counts=True)
        ax = axes[0, 1]
        ax.bar([str(s) for s in sizes], codes)
        ax.set_yscale("log")
        ax.set_xlabel("items sharing the full code (before the de-duplication token)")
        ax.set_ylabel("codes")
        shared = int(bucket_sizes[bucket_sizes > 1].sum())
        ax.set_title(f"Collisions: {shared} of {int(bucket_sizes.sum())} items share a code")
    return _save(fig, folder, "codebook_usage.png")


def metric_over_days(days: list[str], series: dict[str, list[float]], metric: str, folder: Path) -> Path:
    """One line per method (e.g. encoder vs popularity) of a daily metric."""
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    for name, values in series.items():
        ax.plot(days, values, marker="o", label=name)
    ax.set_title(f"next-day {metric}")
    ax.set_ylim(bottom=0)
    ax.tick_params(axis="x", rotation=30)
    ax.legend()
    return _save(fig, folder, f"{metric}_over_days.png")


def quarantine_reasons(counts: dict[str, int], raw_lines: int, folder: Path, ds: str) -> Path:
    """Quarantined rows of the day by reason."""
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    names = sorted(counts, key=counts.get, reverse=True)
    ax.barh(names, [counts[n] for n in names])
    ax.invert_yaxis()
    ax.set_title(f"quarantine on {ds}: {sum(counts.values())} of {raw_lines} raw lines")
    return _save(fig, folder, "quarantine_reasons.png")


def compatibility(hr10: dict[str, float], angle_deg: float, overlap: float, folder: Path, old_version: str) -> Path:
    """HR@10 of the held-out items when users and items come from the same or different model versions."""
    fig, ax = plt.subplots(figsize=(7.5, 3.5))
    names = list(hr10)
    ax.barh(names, [hr10[n] for n in names], color=["#4c72b0", "#8172b2", "#c44e52", "#dd8452", "#55a868"][:len(names)])
    ax.invert_yaxis()
    ax.set_xlabel("validation HR@10 (held-out next item)")
    ax.set_title(f"compatibility with v{old_version}\nrotation {angle_deg:.1f} deg, neighbour overlap@10 {overlap:.2f}")
    return _save(fig, folder, "compatibility.png")
