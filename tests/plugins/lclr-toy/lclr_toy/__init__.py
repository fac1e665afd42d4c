"""lclr-toy: a tiny generator with random weights, for tests and the tutorial."""
