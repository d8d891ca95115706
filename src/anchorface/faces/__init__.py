"""Faces in frames: detection, crop boxes, paste-back and smoothing (`detect.py`); MediaPipe's 478 landmarks,
expressive regions and relative motion (`landmarks.py`);
MediaPipe's native log lines kept off the terminal (`native_logs.py`)."""
