"""Data curation at scale (§3.3, App. B): raw videos -> clean single-face segments (`anchorface curate`), their
statistics, a held-out test split by identity and the scene-recognition study of §4.5.1. Floor between data/ and
apps/; Ray is imported only by `runner`."""
