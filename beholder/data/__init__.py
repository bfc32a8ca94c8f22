"""The things that pass into and between the commands: images, labels, scores.csv, the contact
sheet, the gallery dataset; and where galleries come from (ingest.py: a web archive mirrored; demo.py:
the synthetic demo gallery)."""
