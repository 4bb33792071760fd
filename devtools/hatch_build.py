"""Hatch build hook: ship the plugin start-up files in editable installs too.

``force-include`` (pyproject) covers regular wheels; editable wheels take their extra files from
``force_include_editable``. Both put, at the root of site-packages, the ``.pth`` file whose import line installs the
hook up to Python 3.14 and the matching PEP 829 ``.start`` file that does it from Python 3.15 (a ``.start`` file
next to a ``.pth`` of the same name makes Python skip the latter's import lines).
"""

from __future__ import annotations

from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

START_UP_FILES = {
    "anomalib_bayes_pfl/anomalib_bayes_pfl_plugins.pth": "anomalib_bayes_pfl_plugins.pth",
    "anomalib_bayes_pfl/anomalib_bayes_pfl_plugins.start": "anomalib_bayes_pfl_plugins.start",
}
"""Source in the repository -> path in the wheel (the root of site-packages)."""


class PluginHookBuildHook(BuildHookInterface):
    """Adds the start-up hook files to editable wheels."""

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        """Called by hatchling before each wheel build."""
        if version == "editable":
            build_data.setdefault("force_include_editable", {}).update(START_UP_FILES)
