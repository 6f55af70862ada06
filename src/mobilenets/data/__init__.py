"""Datasets for every task, named by a data spec, with seeded augmentation."""
