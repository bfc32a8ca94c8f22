"""The tournament labeller and the review: small web apps that turn hours of clicking into tiered
labels and checked decisions (app.py: the pages and their API; export.py: labels for beholder train;
cli.py: beholder label and beholder review). Their databases: beholder/decisions."""
