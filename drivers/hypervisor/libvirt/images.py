"""Image file facts read without qemu-img (the daemon may talk to remote hosts only)."""

from __future__ import annotations

import os
import struct

QCOW2_MAGIC = b"QFI\xfb"


def detect_image_format(path: str) -> str:
    """ "qcow2" if the file starts with the qcow2 magic, else "raw"."""
    with open(path, "rb") as f:
        return "qcow2" if f.read(4) == QCOW2_MAGIC else "raw"


def virtual_size(path: str) -> int:
    """Guest-visible size in bytes: the qcow2 header's size field (offset 24, big-endian u64),
    or the file size for raw images."""
    with open(path, "rb") as f:
        header = f.read(32)
    if header[:4] == QCOW2_MAGIC and len(header) >= 32:
        return int(struct.unpack(">Q", header[24:32])[0])
    return os.path.getsize(path)
