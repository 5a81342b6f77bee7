"""Test fixtures shipped with the package: synthetic crypts and slides, oracle predictors, references.

Tests, benchmarks and users' own checks share them; nothing in the pipeline imports
this package. ``synthetic``: drawn crypt maps and H&E-like images; ``slides``: pyramidal
slides of a known layout; ``oracle``: a predictor that renders exact maps of a layout;
``reference``: slow twins of compiled kernels; ``interrupt``: a stand-in for a killed
whole-slide run.
"""
