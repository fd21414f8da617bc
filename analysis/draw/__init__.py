"""The drawing of the figures python -m analysis.figures makes (analysis/figures.py lists them): common.py what
they share, attention.py, study.py, size.py and training.py the figures by what they show."""
