"""Fuzzing of the parsers that read network input: shared targets and seeds, atheris harness."""
