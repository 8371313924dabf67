"""Technician calibration: procedures per modality, the device side, the calibration gate."""
