"""alexpipe: the `alexpipe` command. The work lives in pipeline/, model/, train/ and bench/.

Installed, those folders are the sub-packages alexpipe.pipeline, alexpipe.model,
alexpipe.train and alexpipe.bench (pyproject.toml maps them). Run from a source
checkout without installing (a GPU machine with no pip, say), the checkout's
root joins this package's search path, so the same names resolve to the same folders.
"""

from pathlib import Path as _Path

__version__ = "0.1.0"

_ROOT = _Path(__file__).resolve().parent.parent
if (_ROOT / "pyproject.toml").is_file() and (_ROOT / "pipeline" / "__init__.py").is_file():
    __path__.append(str(_ROOT))  # noqa: F821 - a package's own __path__
