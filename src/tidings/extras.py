"""What to tell a user whose install lacks an optional extra (``redis``, ``postgres``).

tidings is not on the package index: an extra is installed from a checkout
(``pip install -e '.[redis]'``) or from a wheel built with ``python -m build``
(docs/operations.md#installing).
"""

from __future__ import annotations

from tidings.errors import UsageError


def install_hint(extra: str) -> str:
    """The one line that says how to install ``extra``, in every way that works today."""
    return (f"install the {extra!r} extra: pip install -e '.[{extra}]' in a checkout, "
            f"or pip install 'dist/tidings-VERSION-py3-none-any.whl[{extra}]' "
            "(docs/operations.md#installing)")


def missing_extra(what: str, extra: str, exc: ImportError) -> UsageError:
    """The :class:`UsageError` to raise when ``what`` needs ``extra`` and importing failed
    with ``exc``; the CLI prints it on one line and exits 2."""
    return UsageError(f"{what} needs {exc.name or 'a module'} ({exc}): {install_hint(extra)}")


__all__ = ["install_hint", "missing_extra"]
