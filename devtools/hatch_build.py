"""Hatch build hook: ship the plugin ``.pth`` hook in editable installs too.

``force-include`` (pyproject) covers regular wheels; editable wheels take their extra files from
``force_include_editable``.
"""

from __future__ import annotations

from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

PTH_SOURCE = "anomalib_bayes_pfl/anomalib_bayes_pfl_plugins.pth"
PTH_TARGET = "anomalib_bayes_pfl_plugins.pth"


class PluginHookBuildHook(BuildHookInterface):
    """Adds the start-up hook to editable wheels."""

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        """Called by hatchling before each wheel build."""
        if version == "editable":
            build_data.setdefault("force_include_editable", {})[PTH_SOURCE] = PTH_TARGET
