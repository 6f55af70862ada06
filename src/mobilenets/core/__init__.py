"""The papers as code: tables, resolved specs, blocks, the cost model, weights files.

Nothing here imports another layer of the package.
"""
