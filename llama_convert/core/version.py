"""The tool's version, in a leaf that every room can import without going through the package front door."""
__version__ = "0.1.0"
