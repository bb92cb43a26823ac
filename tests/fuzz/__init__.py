"""Fuzz tests: every parser of network input either handles an input or raises its typed error."""
