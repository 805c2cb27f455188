"""A griffe extension for the API reference: deepfield's docstrings head their doctests
``Example:`` (as zuko's do), which griffe's Google parser does not know as a section (it knows
``Examples:``), so it would render the doctests as prose, where ``x["a"][0]`` reads as a
markdown link. Renaming the heading when the docs are built keeps the sources as they are."""

from __future__ import annotations

import re

import griffe

_HEADING = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)


class ExampleSection(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _HEADING.sub(r"\1Examples:", obj.docstring.value)
