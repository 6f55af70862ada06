"""Semantic segmentation: Mobile DeepLabv3 (Sandler et al. 2018, section 6.3)."""
