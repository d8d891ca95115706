"""Faces in frames: detection, crop boxes, paste-back and smoothing (`detect.py`); MediaPipe's 478 landmarks,
expressive regions and relative motion (`landmarks.py`)."""
