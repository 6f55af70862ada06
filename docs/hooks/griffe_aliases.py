"""A griffe extension for the API pages: resolve every imported name of the package up front.

A docstring may name an object where a module imports it (``mobilenets.engine.run.train_epoch``
for ``mobilenets.engine.loop.train_epoch``). mkdocstrings registers such a name as an anchor of
the object's own entry when it renders that entry, but only if griffe has resolved the import by
then, which it otherwise does lazily, page by page. Resolving them all once the package is loaded
makes the cross-reference independent of the order of the pages.
"""

from __future__ import annotations

import griffe


def _objects(obj: griffe.Object):
    for member in obj.members.values():
        yield member
        if not member.is_alias and (member.is_module or member.is_class):
            yield from _objects(member)


class ResolveImports(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        for member in _objects(pkg):
            if member.is_alias:
                try:
                    member.resolve_target()
                except (griffe.AliasResolutionError, griffe.CyclicAliasError):
                    pass  # an import from outside the package: nothing of ours to link to
