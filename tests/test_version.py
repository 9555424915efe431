"""One version: the package's ``__version__`` is the distribution's, the images' tag, the chart's."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import yaml

from cutalign import __version__
from cutalign.config import LauncherSettings
from cutalign.pipelines.wiring import IMAGE

CHART = Path(__file__).resolve().parents[1] / "charts" / "cutalign"


def test_every_place_that_names_the_version_derives_it_from_the_package() -> None:
    assert importlib.metadata.version("cutalign") == __version__, "pyproject reads cutalign.__version__"
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == __version__, "bump Chart.yaml's appVersion with cutalign.__version__"
    assert LauncherSettings.model_fields["image"].default.endswith(f":{__version__}")
    assert IMAGE.endswith(f":{__version__}")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    tags = {name: image.get("tag") for name, image in values["images"].items() if isinstance(image, dict)}
    assert all(tag in ("", None, __version__) for tag in tags.values()), f"image tags pinned apart: {tags}"
