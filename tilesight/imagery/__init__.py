"""Imagery: registering sources (COG, GeoTIFF, URL, chip folder, XYZ template) and reading tiles.

`reader.read_tile` is the one primitive everything else (tiles, predictions, jobs)
reads pixels through, so the overlay and the area jobs see exactly the same imagery.
"""
