"""Unit tests of the trainer: data, training, precision (child_trainer/)."""
