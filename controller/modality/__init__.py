"""Modality knowledge: what prescriptions mean, limits and ceilings, dose, per-modality rules."""
