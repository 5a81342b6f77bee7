"""hovercrypt: find, outline and count colonic crypts and glands in H&E histology."""

__version__ = "0.1.0"
