"""Attention analysis: the probe, the metrics of SPEC §4, and the tools that run them on trained runs."""
