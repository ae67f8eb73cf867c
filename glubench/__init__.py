"""glubench: which feed-forward layer should a transformer use?  FFN variants at matched parameters."""

__version__ = "0.1.0"
