"""Tilesight: aerial imagery tiles with live building detection."""
