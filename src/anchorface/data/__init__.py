"""Training data: the prepared dataset's shards, index and sequence sampler (`dataset.py`), and pseudo-clips from
still images (`synthetic.py`)."""
