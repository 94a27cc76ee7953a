"""The optional libraries of the data pipeline (the ``[data]`` extra), imported only by the stages that use them.

A stage asks :func:`require` for its module; a missing library raises an ImportError that names the stage,
the package and the install command, instead of failing deep inside the stage.
"""

from __future__ import annotations

import importlib
from types import ModuleType

INSTALL_HINT = "pip install 'comfyui-opensora[data]' (in a checkout: pip install -e '.[data]')"

# import name -> PyPI package of the [data] extra
PACKAGES = {
    "cv2": "opencv-python",
    "scenedetect": "scenedetect",
    "rapidocr_onnxruntime": "rapidocr-onnxruntime",
}


def require(module: str, stage: str) -> ModuleType:
    """Import ``module`` for ``stage`` or raise an ImportError saying which extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        package = PACKAGES.get(module, module)
        raise ImportError(
            f"the {stage} stage needs the {package} package ({err}); install the data extra: {INSTALL_HINT}"
        ) from None


__all__ = ["INSTALL_HINT", "PACKAGES", "require"]
