"""Facts of CIFAR-10 and of the converted folder that more than one module needs, stated once.

Light on purpose (the standard library only): the command line imports it for its choices.
"""

from __future__ import annotations

import re

NUM_CLASSES = 10
IMAGE_SHAPE = (32, 32, 3)  # height, width, RGB: every image of the dataset
SPLITS = ("train", "val", "test")  # a converted folder's splits, in the order they are listed
MANIFEST = "manifest.json"  # the file that says what a converted folder holds
SHA256_HEX = re.compile(r"[0-9a-f]{64}")  # how every digest alexpipe records is written

__all__ = ["IMAGE_SHAPE", "MANIFEST", "NUM_CLASSES", "SHA256_HEX", "SPLITS"]
