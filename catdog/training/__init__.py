"""The training job: fetch, split, train and evaluate (TensorFlow lives in data, model and train only)."""
