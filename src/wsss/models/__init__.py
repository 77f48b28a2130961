"""Networks: the backbone registry, the CAM classifier, IRN, DeepLab, and the geometry and steps they share."""
