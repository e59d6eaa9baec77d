"""Bounded fuzzing of the parsers and the HTTP routes (Hypothesis, schemathesis); about a minute per target."""
