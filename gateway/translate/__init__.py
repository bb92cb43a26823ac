"""translate layer."""
