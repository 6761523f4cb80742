"""Data: sources (the built-in ultrasound simulator first) and the grain input pipeline."""
