"""Files in and out: atomic outputs (`atomic.py`), versioned JSON manifests (`manifest.py`), images and the
resize rule (`images.py`), videos with PyAV (`video.py`)."""
