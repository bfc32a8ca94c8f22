import math

import numpy as np
import pytest

from beholder.data.labels import best_rating, low_rating
from beholder.models.metrics import CULL_LEVELS, cull_curve, lowest_line
from beholder.predict.policy import Policy, binomial_tail, photos_needed, promised_threshold


def normal_cdf(x):
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def test_binomial_tail_and_photos_needed():
    assert binomial_tail(1, 24, 0.05) == pytest.approx(1 - 0.95**24)
    assert binomial_tail(0, 10, 0.3) == pytest.approx(1.0)
    assert photos_needed(0.95, 0.9) == 45 and binomial_tail(1, 45, 0.05) >= 0.9 > binomial_tail(1, 44, 0.05)


@pytest.mark.parametrize("n, recall, confidence", [(60, 0.9, 0.8), (200, 0.95, 0.9)])
def test_the_promise_holds_for_new_photos(n, recall, confidence):
    """Over many calibration sets, the share of new top-tier photos scoring above the promised
    threshold reaches ``recall`` in at least ``confidence`` of them (and the plain minimum is not needed)."""
    rng = np.random.default_rng(0)
    trials, kept_promise, above_min = 2000, 0, 0
    for _ in range(trials):
        scores = rng.normal(size=n)
        threshold, reached = promised_threshold(list(scores), recall, confidence)
        assert reached >= confidence and threshold >= scores.min()
        kept_promise += 1 - normal_cdf(threshold) >= recall
        above_min += threshold > scores.min()
    assert kept_promise / trials >= confidence - 0.02  # sampling noise of 2,000 trials
    assert above_min / trials > 0.9  # the bound is not just the lowest score: it reduces the gallery


def test_bands_and_too_few_calibration_photos():
    few = Policy.calibrated([0.9, 0.8, 0.7])
    assert few.keep_at == few.reject_below == pytest.approx(0.7)
    assert "only 14% confidence (45 calibration photos are needed for 90%)" in few.summary
    policy = Policy.calibrated(list(np.linspace(0, 1, 300)), keep_recall=0.5)
    assert policy.keep_at == pytest.approx(0.5, abs=0.01) and 0 < policy.reject_below < 0.1
    assert [policy.band(s) for s in (0.9, 0.3, -0.1)] == ["keep", "review", "reject"]
    assert policy.distance(0.3) == 0 and policy.distance(0.9) == pytest.approx(0.9 - policy.keep_at)
    top = Policy.top(2, "keep_top")
    assert [top.band(0.1, rank) for rank in (1, 2, 3)] == ["keep", "keep", "reject"]
    assert Policy.fixed(0.5, "threshold=0.5").band(0.4) == "reject"


def test_with_fewer_photos_than_the_promise_needs_it_rests_on_normal_scores():
    """19 top-tier calibration scores (a cv=5 run on OASIS): the order statistic reaches only 62 %
    confidence, the normal tolerance bound keeps 95 % of new photos in about 90 % of calibration sets."""
    rng = np.random.default_rng(1)
    trials, kept_promise = 2000, 0
    for _ in range(trials):
        scores = list(rng.normal(size=19))
        policy = Policy.calibrated(scores)
        assert policy.reject_below <= min(scores) and "90% confidence if their scores are normal" in policy.summary
        kept_promise += 1 - normal_cdf(policy.reject_below) >= 0.95
    assert 0.86 <= kept_promise / trials <= 0.95  # Natrella's factor is 1.3 % below the exact one at n = 19
    assert "only" in Policy.calibrated(list(rng.normal(size=9))).summary  # below 10 scores no normal promise


def test_cull_levels_keep_their_share_of_the_persons_best_and_cut_harder_in_turn():
    """A generous rater: a third of their photos at 5 stars. Out of fold, their best score higher,
    with noise. Each level keeps about its share of what they rated 4 or more, and a harder one cuts more."""
    rng = np.random.default_rng(3)
    ratings = rng.choice([1, 2, 3, 4, 5], size=300, p=[0.05, 0.1, 0.25, 0.27, 0.33]).astype(float)
    scores = list(ratings + rng.normal(0, 1.2, 300))
    assert best_rating(list(ratings)) == 4 and best_rating([3.0, 3.0]) == 3 and best_rating([-1.0, 2.0, 5.0]) == 2
    curve = cull_curve(scores, list(ratings))
    assert [level for level, _, _ in curve] == list(CULL_LEVELS)
    for (level, kept, cut), share in zip(curve, CULL_LEVELS.values()):
        assert share <= kept < share + 0.01  # at least the level's share, by one photo at most
    assert curve[0][2] < curve[1][2] < curve[2][2] and curve[1][2] > 0.25  # it does cut a generous rater's photos
    policy = Policy.cull(scores, list(ratings), "normal")
    assert policy.keep_at == policy.reject_below and "cull=normal" in policy.summary and "rated 4 or more" in policy.summary


def test_the_lowest_line_lies_under_every_photo_rated_above_the_lowest_ratings():
    ratings = [1.0, 1.0, 2.0, 1.0, 2.0, 1.0, 3.0, 4.0, 5.0, 2.0]
    scores = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.9, 1.0, 0.8]  # a 2-star photo scores above the lowest 3-star one
    assert low_rating(ratings) == 2 and low_rating([4.0]) == 4
    assert lowest_line(scores, ratings) == (0.7, 2.0, 6)
    policy = Policy.cull(scores, ratings, "normal").with_lowest_line(scores, ratings)
    assert policy.lowest_below == 0.7 and "all 6 of their photos there rated 2 or less" in policy.summary
    assert [policy.reason(score) for score in (0.65, 0.7)] == ["lowest", "score"]
    few = [0.1, 0.2, 0.9, 0.95, 1.0, 0.3, 0.4, 0.5, 0.6, 0.05]  # only 4 rated photos lie under the lowest 3-star photo's score
    assert lowest_line([0.1, 0.2, 0.3, 0.4, 0.45, 0.5, 0.9, 0.95, 0.99, 0.6], [1, 1, 1, 1, 3, 2, 4, 5, 5, 2])[0] == -math.inf
    assert Policy.fixed(0.5, "threshold=0.5").with_lowest_line(few, ratings).lowest_below == -math.inf
