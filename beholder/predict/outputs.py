"""What a run leaves in its output folder: skipped.csv, embeddings, the contact sheet, scores.csv, and the XMP sidecars."""

from __future__ import annotations

from collections import Counter

from botocore.exceptions import ClientError

from beholder.core.storage import is_s3, join
from beholder.data.contact_sheet import highlights_html
from beholder.data.scores import FILE as SCORES
from beholder.data.scores import scores_csv
from beholder.models.module import BeholderModule
from beholder.predict.report import score_histogram_svg, skipped_csv, trade_off_svg
from beholder.ratings.xmp import NAMESPACES, sidecar_targets, write_sidecars
from beholder.search.embeddings import CHECKPOINT, write_parquet
from beholder.search.embeddings import FILE as EMBEDDINGS

BEHOLDER_MARK = NAMESPACES["beholder"].encode()  # in every sidecar beholder wrote


def probability_names(module: BeholderModule) -> list[str]:
    head = module.net.head
    if not hasattr(head, "probabilities"):
        return []
    if head.num_classes == 4:
        return [f"p_tier{t}" for t in range(4)]
    return [f"p_tier_below{head.positive_tier}", f"p_tier{head.positive_tier}_up"]


def write_results(cfg, module, store, gallery, output, ranked, vectors, skipped, summary, ckpt_path: str) -> None:
    """``vectors``: the ranked rows' embeddings, in their order (None without embeddings)."""
    store.write(join(output, "skipped.csv"), skipped_csv(skipped))
    count = cfg.highlights
    culled = Counter(row["group"] for row in ranked if row["reason"] == "burst")
    for row in ranked:
        if row.get("group_rank") == 1 and culled[row["group"]]:
            row["hidden"] = culled[row["group"]]
    kept = [row for row in ranked if row["band"] == "keep"]
    review = [row for row in ranked if row["band"] == "review"]
    rejected = [row for row in ranked if row["band"] == "reject"]
    sections = [
        (f"Top {min(count, len(ranked))}", ranked[:count]),
        ("Lowest-scoring kept", kept[-(count // 2):] if kept else []),
        (f"To review: {len(review)} between the thresholds" + (f", the best {count} shown" if len(review) > count else ""), review[:count]),
        ("Highest-scoring rejected", rejected[: count // 2]),
    ]
    line = (
        f"{summary['scored']} images scored: {summary['kept']} kept, {summary['review']} to review, {summary['rejected']} rejected "
        f"({summary['gallery_reduction']:.1%} of the gallery dropped"
        + (f", {summary['groups']['burst_rejected']} of them near-copies" if summary["groups"] and summary["groups"]["burst_rejected"] else "")
        + f"). {summary['threshold_source']}"
    )
    if cfg.embeddings:
        with open(ckpt_path, "rb") as f:
            store.write(join(output, CHECKPOINT), f.read())
        images = [row["image"] for row in ranked]
        store.write_with(join(output, EMBEDDINGS), lambda f: write_parquet(f, images, vectors, summary["checkpoint"], gallery))
    histogram = score_histogram_svg([row["score"] for row in ranked], summary["threshold"], summary["reject_below"])
    if module.rated_scores:  # a personal model: what a harder or gentler cull would cost, in the person's own ratings
        histogram += " " + trade_off_svg(module.rated_scores["scores"], module.rated_scores["ratings"], summary["threshold"])
    store.write(join(output, "highlights.html"), highlights_html(sections, lambda image: store.read(join(gallery, image)), line, histogram))
    # scores.csv last of the results: its presence says the run is complete; the sidecars follow,
    # so that no sidecar, however broken, costs the results
    store.write(join(output, SCORES), scores_csv(ranked, probability_names(module)))
    if cfg.xmp:
        write_xmp(cfg, store, gallery, output, ranked, list(skipped), summary)


def write_xmp(cfg, store, gallery, output, ranked, skipped, summary) -> None:
    """One XMP sidecar per scored image (beside it, or under OUTPUT/xmp), merged into each one
    already there that the image owns (never replacing the photographer's own fields, never making a
    second beside it); one that is not XMP, read-only or not a file is left as it is and named."""
    root = gallery if cfg.xmp_beside_images and not is_s3(gallery) else join(output, "xmp")
    try:
        existing = store.list(root, (".xmp",))
    except FileNotFoundError:
        existing = []
    names = sidecar_targets([row["image"] for row in ranked] + skipped, existing, cfg.xmp_naming)
    targets = {row["image"]: [join(root, name) for name in names[row["image"]]] for row in ranked}
    summary["sidecars"] = write_sidecars(store, ranked, targets, summary["kept"], bool(cfg.xmp_overwrite_ratings), gallery,
                                         None if is_s3(root) else root, bool(cfg.xmp_stars))
    summary["sidecars"]["folder"] = root
    if not cfg.xmp_beside_images or is_s3(gallery):  # beholder's own folder: the sidecars of photos no longer in the gallery go
        wanted = {name for owned in names.values() for name in owned}
        gone = [join(root, name) for name in existing if name not in wanted and written_by_beholder(store, join(root, name))]
        store.delete_many(gone)
        summary["sidecars"]["removed"] = len(gone)


def written_by_beholder(store, uri: str) -> bool:
    try:
        return BEHOLDER_MARK in store.read(uri)
    except (OSError, ClientError):
        return False
