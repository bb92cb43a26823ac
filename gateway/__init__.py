"""Passerelle: a secure-messaging gateway between two S/MIME health mail networks."""

__version__ = "0.1.0"
