"""The run's summary: counted from the ranked rows, and printed for the person."""

from __future__ import annotations

import math
import os
from collections import Counter

from omegaconf import DictConfig

from beholder.core import console
from beholder.core.console import examples, line, listed
from beholder.core.storage import join
from beholder.data.scores import FILE as SCORES
from beholder.predict.policy import Policy
from beholder.search.embeddings import FILE as EMBEDDINGS


def small_reduction_warning(cfg: DictConfig, summary: dict, policy: Policy, ranked: list[dict], calibration: str) -> str | None:
    """Why little of the gallery was culled, when the calibrated threshold is what keeps it."""
    if summary["gallery_reduction"] >= 0.25 or any(cfg.get(name) is not None for name in ("threshold", "keep_top")):
        return None
    reaching = sum(row["score"] >= policy.reject_below for row in ranked) / len(ranked)
    return (f"only {summary['gallery_reduction']:.0%} of the gallery is culled: the model's calibration photos ({calibration}) "
            f"score down to {policy.reject_below:.4f}, and {reaching:.0%} of this gallery scores that high; cull=hard (a personal "
            "model: keeps about 70% of the photos you rated best) or keep_top=0.3 cut harder, at the cost of some photos like those")


def groups_summary(cfg: DictConfig, ranked: list[dict], culled: int, similarity: float, source: str) -> dict | None:
    if not cfg.embeddings:
        return None
    sizes = [row["group_size"] for row in ranked if row["group_rank"] == 1]
    return {
        "groups": sum(size > 1 for size in sizes),
        "images_in_groups": sum(size for size in sizes if size > 1),
        "similarity": similarity,
        "similarity_source": source,
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
    lines = [line("near-copies", f"{groups['groups']} groups of {groups['images_in_groups']} images "
                                 f"(similarity >= {groups['similarity']:g}, {groups['similarity_source']}{within})")]
    if groups["without_time"]:
        lines.append(line("no capture time", f"{groups['without_time']} images (not grouped: group_window needs a time)"))
    if groups["keep_per_group"] is not None:
        lines.append(line("burst copies", f"{groups['burst_rejected']} rejected, keep_per_group={groups['keep_per_group']} "
                          f"(gallery reduction {summary['gallery_reduction_before_bursts']:.1%} -> {summary['gallery_reduction']:.1%})"))
    return lines


def sidecar_lines(sidecars: dict | None) -> list[str]:
    if sidecars is None:
        return []
    left = sidecars["left_alone"]
    removed = f", {sidecars['removed']} removed (their photos are gone)" if sidecars.get("removed") else ""
    return [line("sidecars", f"{sidecars['created']} created, {sidecars['merged']} merged into, {sidecars['unchanged']} unchanged "
                             f"(already held this decision), {len(left)} left alone{removed} "
                             f"({sidecars['folder']})"),
            *listed("left alone", left)]


def technical_lines(counted: dict | None) -> list[str]:
    if counted is None:
        return []
    said = lambda reasons: ", ".join(f"{reason} {count}" for reason, count in sorted(reasons.items(), key=lambda item: -item[1]))  # noqa: E731
    rejected, review = sum(counted["reject"].values()), sum(counted["review"].values())
    return [line("technical", f"{rejected} rejected" + (f" ({said(counted['reject'])})" if rejected else "")
                 + f", {review} borderline to review" + (f" ({said(counted['review'])})" if review else "")
                 + (f"; {counted['rated']} more failed but keep the person's own verdict" if counted.get("rated") else ""))]


def ignored_lines(ignored: dict[str, list[str]]) -> list[str]:
    """What the gallery holds that was not scored, by why: file types counted by suffix."""
    lines = []
    for why, names in ignored.items():
        if why == "other file types":
            suffixes = Counter(os.path.splitext(name)[1].lower() or "no suffix" for name in names)
            why = f"other file types ({', '.join(f'{suffix} {count}' for suffix, count in suffixes.most_common(4))}" \
                  + (", ..." if len(suffixes) > 4 else "") + ")"
        elif why == "names not UTF-8":
            why += " (rename them to have them scored)"
        lines.append(line("not scored", f"{len(names)} {why}  {examples(names)}"))
    return lines


def computed_in_words(computed: dict) -> str:
    """``bf16, channels_last, 354 batch norms folded  (precision=auto, native on this machine: AVX512-BF16)``."""
    folded = computed.get("folded_norms")
    kind = ", ".join([computed["precision"], *(["channels_last"] if computed["channels_last"] else []),
                      *(["torch.compile"] if computed["compile"] else []),
                      *([f"{folded} batch norms folded"] if isinstance(folded, int) and folded else []),
                      *(["batch norms left unfolded (folding changed the features)"] if folded == "disagreed" else [])])
    return f"{kind}  ({computed['why']})"


def print_summary(summary: dict, ranked: list[dict], skipped: dict[str, str], ignored: dict[str, list[str]]) -> None:
    since, rated = summary["since_last_run"], summary["rated"]
    processes = f"{summary['processes']} process{'es' if summary['processes'] != 1 else ''}"
    speed = f"{summary['images_per_second']:.1f} images/s, {processes}" if summary["newly_scored"] else "nothing new to score"
    if summary.get("from_cache"):
        speed += f"; {summary['from_cache']['photos']} of them from the feature cache {os.path.expanduser(summary['from_cache']['folder'])}"
    review = f"(score >= {summary['reject_below']:.4f})" if summary["reject_below"] < summary["threshold"] else "(no review band: one threshold)"
    why_rejected = "; ".join(f"{why} {count}" for why, count in summary["rejected_for"].items() if count)
    lines = [
        line("model", summary["model"]),
        line("images found", summary["found"]),
        line("scored", f"{summary['scored']}  ({summary['newly_scored']} in this run, {speed})"),
        *([line("computed in", computed_in_words(summary["computed_in"]))] if summary["newly_scored"] else []),
        *[line("rescored", f"{count}  ({reason})") for reason, count in summary["rescored"].items()],
        *([line("since last run", f"{since['new']} new, {since['changed']} changed, {since['gone']} gone (the rest's scores kept)")] if since else []),
        line("skipped", f"{summary['skipped']}" + (f"  {examples(f'{i}: {r}' for i, r in skipped.items())}" if skipped else "")),
        *ignored_lines(ignored),
        line("kept", f"{summary['kept']}  (score >= {summary['threshold']:.4f})"),
        line("to review", f"{summary['review']}  {review}"),
        line("rejected", f"{summary['rejected']}  (gallery reduction {summary['gallery_reduction']:.1%}"
                         + (f": {why_rejected})" if why_rejected else ")")),
        *([line("rated", f"{sum(rated.values())} keep the person's own verdict ({rated['keep']} keep, {rated['reject']} reject)")]
          if sum(rated.values()) else []),
        *technical_lines(summary.get("technical")),
        *([line("warning", summary["warning"])] if summary["warning"] else []),
        *group_lines(summary),
        line("thresholds", summary["threshold_source"]),
        *sidecar_lines(summary.get("sidecars")),
        line("results", join(summary["output"], SCORES)),
        line("contact sheet", join(summary["output"], "highlights.html")),
        *([line("embeddings", join(summary["output"], EMBEDDINGS))] if summary.get("embeddings") else []),
        "  top 10:",
        *[f"    {row['rank']:>3}. {row['score']:.4f}  {row['image']}" for row in ranked[:10]],
    ]
    console.print_summary("gallery scored", lines)
