"""Technical quality: the soft, the shaken, the badly exposed and the noisy, measured on the decoded
photo (:mod:`beholder.technical.measures`) and judged by a small calibrated head (:mod:`beholder.technical.judge`)."""

# The failures the checks tell apart, by the names configs use, and the reason a photographer reads
# (in scores.csv, on the contact sheet and the review page, and as keywords in XMP).
REASONS = {"focus": "out of focus", "shake": "camera shake", "highlights": "blown highlights", "shadows": "too dark", "noise": "noisy"}
