"""Accuracy evaluations: ``streamvlm eval needle`` (needle-in-a-video-haystack recall)."""
