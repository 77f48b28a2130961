"""Training: the one engine and the trainers on it (CAM classifier, W-OoD, IRN)."""
