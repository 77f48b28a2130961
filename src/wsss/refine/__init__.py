"""Refinement of maps into masks: dense CRF, IR labels, IRN's random walk, pseudo masks."""
