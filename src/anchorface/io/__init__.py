"""Files in and out: images and videos with PyAV and Pillow (`video.py`)."""
