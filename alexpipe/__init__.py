"""alexpipe: the `alexpipe` command. The work lives in pipeline/, model/, train/ and bench/."""

__version__ = "0.1.0"
