"""Dependency order: which packages go first (pure; the daemon's plan and the bundles use it)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from otakit.errors import ValidationError

__all__ = ["install_order"]


def install_order(roots: str | Iterable[str], requires: Mapping[str, Iterable[str]]) -> list[str]:
    """Packages reachable from ``roots``, each after everything it requires (the roots in their order,
    each as early as its requirements allow).

    ``requires[name]`` lists the packages ``name`` needs installed first; a package requiring itself
    (the original project listed packages as their own dependency) orders nothing. A cycle is an error.
    """
    order: list[str] = []
    state: dict[str, str] = {}  # "visiting" or "done"

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = [*path[path.index(name) :], name]
            raise ValidationError(f"dependency cycle: {' -> '.join(cycle)}")
        state[name] = "visiting"
        for needed in sorted(requires.get(name, ())):
            if needed != name:
                visit(needed, [*path, name])
        state[name] = "done"
        order.append(name)

    for root in [roots] if isinstance(roots, str) else roots:
        visit(root, [])
    return order
