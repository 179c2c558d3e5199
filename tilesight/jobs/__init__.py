"""Area jobs: an AOI cut into chunks of tiles, inferred, vectorised, merged, exported."""
