"""Helpers shared by the whole package: files written atomically, the machine's description,
the console (TensorFlow's start-up noise, signals)."""
