"""A photographer's own ratings: read from XMP sidecars, Lightroom and darktable catalogues as labels
for beholder train (sources.py), and beholder's decisions written back as XMP merged into what is there
(xmp.py); beholder ratings runs both."""
