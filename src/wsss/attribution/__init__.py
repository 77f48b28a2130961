"""Localization maps from a classifier: CAM, AdvCAM and RIB (model + image -> maps), with the reference loops."""
