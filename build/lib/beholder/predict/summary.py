"""The run's summary: counted from the ranked rows, and printed for the person."""

from __future__ import annotations

import math

from omegaconf import DictConfig

from beholder.core.storage import join
from beholder.predict.policy import Policy
from beholder.search.embeddings import FILE as EMBEDDINGS


def small_reduction_warning(cfg: DictConfig, summary: dict, policy: Policy, ranked: list[dict], calibration: str) -> str | None:
    """Why little of the gallery was culled, when the calibrated threshold is what keeps it."""
    if summary["gallery_reduction"] >= 0.25 or any(cfg.get(name) is not None for name in ("threshold", "keep_top")):
        return None
    reaching = sum(row["score"] >= policy.reject_below for row in ranked) / len(ranked)
    return (f"only {summary['gallery_reduction']:.0%} of the gallery is culled: the model's calibration photos ({calibration}) "
            f"score down to {policy.reject_below:.4f}, and {reaching:.0%} of this gallery scores that high; keep_recall=0.9 or "
            "keep_top=0.3 cut harder, at the cost of some photos like those")


def groups_summary(cfg: DictConfig, ranked: list[dict], culled: int) -> dict | None:
    if not cfg.embeddings:
        return None
    sizes = [row["group_size"] for row in ranked if row["group_rank"] == 1]
    return {
        "groups": sum(size > 1 for size in sizes),
        "images_in_groups": sum(size for size in sizes if size > 1),
        "similarity": float(cfg.group_similarity),
        "window_s": cfg.group_window,
        "without_time": sum(math.isnan(row["taken"]) for row in ranked) if cfg.group_window is not None else 0,
        "keep_per_group": cfg.keep_per_group,
        "burst_rejected": culled,
    }


def group_lines(summary: dict) -> list[str]:
    groups = summary.get("groups")
    if not groups:
        return []
    within = f" taken within {groups['window_s']} s" if groups["window_s"] is not None else ""
    lines = [f"  near-copies     {groups['groups']} groups of {groups['images_in_groups']} images (similarity >= {groups['similarity']}{within})"]
    if groups["without_time"]:
        lines.append(f"  no capture time {groups['without_time']} images (not grouped: group_window needs a time)")
    if groups["keep_per_group"] is not None:
        lines.append(f"  burst copies    {groups['burst_rejected']} rejected, keep_per_group={groups['keep_per_group']} "
                     f"(gallery reduction {summary['gallery_reduction_before_bursts']:.1%} -> {summary['gallery_reduction']:.1%})")
    return lines


def sidecar_lines(sidecars: dict | None, shown: int = 10) -> list[str]:
    if sidecars is None:
        return []
    left = sidecars["left_alone"]
    lines = [f"  sidecars        {sidecars['created']} created, {sidecars['merged']} merged into, {len(left)} left as they were ({sidecars['folder']})"]
    lines += [f"    left as it was: {problem}" for problem in left[:shown]]
    return lines + ([f"    ... and {len(left) - shown} more"] if len(left) > shown else [])


def print_summary(summary: dict, ranked: list[dict], skipped: dict[str, str]) -> None:
    lines = [
        "",
        "beholder: gallery scored",
        f"  model           {summary['model']}",
        f"  images found    {summary['found']}",
        f"  scored          {summary['scored']}  ({summary['newly_scored']} in this run, {summary['images_per_second']:.1f} images/s, "
        f"{summary['processes']} process{'es' if summary['processes'] != 1 else ''})",
        *[f"  rescored        {count}  ({reason})" for reason, count in summary["rescored"].items()],
        *([f"  since last run  {summary['since_last_run']['new']} new, {summary['since_last_run']['changed']} changed, "
           f"{summary['since_last_run']['gone']} gone (the rest's scores kept)"] if summary["since_last_run"] else []),
        f"  skipped         {summary['skipped']}" + ("" if not skipped else "  e.g. " + "; ".join(f"{i}: {r}" for i, r in list(skipped.items())[:3])),
        f"  kept            {summary['kept']}  (score >= {summary['threshold']:.4f})",
        f"  to review       {summary['review']}  " + (f"(score >= {summary['reject_below']:.4f})" if summary["reject_below"] < summary["threshold"]
                                                        else "(no review band: one threshold)"),
        f"  rejected        {summary['rejected']}  (gallery reduction {summary['gallery_reduction']:.1%})",
        *([f"  rated           {sum(summary['rated'].values())} keep the person's own verdict ({summary['rated']['keep']} keep, "
           f"{summary['rated']['reject']} reject)"] if sum(summary["rated"].values()) else []),
        *([f"  warning         {summary['warning']}"] if summary["warning"] else []),
        *group_lines(summary),
        f"  thresholds      {summary['threshold_source']}",
        *sidecar_lines(summary.get("sidecars")),
        f"  results         {join(summary['output'], 'scores.csv')}",
        f"  contact sheet   {join(summary['output'], 'highlights.html')}",
        *([f"  embeddings      {join(summary['output'], EMBEDDINGS)}"] if summary.get("embeddings") else []),
        "  top 10:",
    ]
    lines += [f"    {row['rank']:>3}. {row['score']:.4f}  {row['image']}" for row in ranked[:10]]
    print("\n".join(lines), flush=True)
