"""Data: fastMRI volumes, fastMRI+ annotations, synthetic knees, the slice store."""
