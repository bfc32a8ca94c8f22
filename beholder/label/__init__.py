"""The tournament labeller: a small web app that turns hours of clicking into tiered labels
(app.py: the page and its API; tournament.py: the rounds, in SQLite; export.py: labels for beholder train;
cli.py: beholder label and beholder review)."""
