"""The segmentation stage: losses for training on pseudo masks and multi-scale inference.

The network itself lives in :mod:`wsss.models.deeplab`; :mod:`wsss.segmentation.losses` holds
the training losses (cross-entropy, DSRG's balanced cross-entropy, BANA's noise-aware loss and
its alternatives) and :mod:`wsss.segmentation.inference` the multi-scale, flipped prediction
that writes label PNGs.
"""
