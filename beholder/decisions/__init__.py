"""The people's decisions, in SQLite: the labeller's rounds (tournament.py) and the review of a
model's keep / review / reject (review.py). beholder label and beholder review serve them
(beholder/label); ratings import and label export read them."""
