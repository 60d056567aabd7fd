"""Pieces of the HTML reports: pages and tables, inline SVG plots, heat maps and thumbnails."""
