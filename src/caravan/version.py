"""caravan's version, in a module of its own: modules inside caravan read it without importing the package."""

__version__ = "0.1.0"
