"""The labeling job: sources, engines, the labels CSV and its record, merge and report (no TensorFlow)."""
