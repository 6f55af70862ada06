"""The named models: the registry, published figures and weights, conversion, the factories."""
