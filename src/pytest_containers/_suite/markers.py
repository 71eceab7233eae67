"""Reading ``@pytest.mark.container(...)``: which containers a test declares.

Validated at collection, before any Docker call, so that a typo in a marker is a
collection error naming the test and the keyword rather than a failure at run time.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import pytest

from pytest_containers.errors import DeclarationError

if TYPE_CHECKING:
    from pytest_containers._manager.declaration import Declaration

MARKER = "container"


def param(declaration: Declaration) -> str:
    """The parameter that carries the image when the marker names several."""
    return f"_container_image_{declaration.index}"


def image_for(declaration: Declaration, item: object) -> str:
    """The image ``declaration`` runs for ``item`` (a test): the one the test's
    parametrization picked when the marker names several, else its only one."""
    callspec = getattr(item, "callspec", None)
    if callspec is not None and param(declaration) in callspec.params:
        return str(callspec.params[param(declaration)])
    return declaration.images[0]


def _declaration(index: int, mark: pytest.Mark, where: str, rootdir: Any) -> Declaration:
    from pytest_containers._manager.declaration import MARKER as FORM
    from pytest_containers._manager.declaration import check_build, declare

    declaration = declare(FORM, mark.args, mark.kwargs, where=where)
    check_build(declaration, rootdir, where)
    return dataclasses.replace(declaration, index=index)


#: An item's declarations, read once at collection and reused by its fixtures.
declarations_key = pytest.StashKey[list["Declaration"]]()


def declarations(node: pytest.Item | Any) -> list[Declaration]:
    """The container markers of a test (its own, its class's and its module's)."""
    with_nodes = list(node.iter_markers_with_node(MARKER))
    if not with_nodes:
        return []
    where = getattr(node, "nodeid", "") or getattr(node, "name", "?")
    rootdir = node.config.rootpath
    try:
        found = [
            _declaration(index, mark, where, rootdir) for index, (_, mark) in enumerate(with_nodes)
        ]
    except DeclarationError as error:
        error.test = error.test or where  # the message names it already: see __str__
        raise
    # pytest lists the test's own marks first, bottom decorator first, then its class's
    # and module's: start the outer ones first, and decorators in the order written.
    owners: list[Any] = []
    for owner, _ in with_nodes:
        if owner not in owners:
            owners.append(owner)
    written: list[int] = []
    for owner in reversed(owners):
        indexes = [i for i, (other, _) in enumerate(with_nodes) if other is owner]
        written.extend(reversed(indexes) if owner is node else indexes)
    found = [
        dataclasses.replace(declaration, order=written.index(declaration.index))
        for declaration in found
    ]
    from pytest_containers._manager.declaration import duplicated_names

    duplicates = duplicated_names([declaration.name for declaration in found])
    if duplicates:
        raise DeclarationError(
            f"{where}: several container markers are named {', '.join(map(repr, duplicates))}; "
            "give each its own name=..., e.g. @pytest.mark.container('redis:7', name='cache')",
            test=where,
        )
    return found
