"""Image files on the daemon's machine: format, sizes and sha256 (vmmgr.ports.ImageFiles)."""

from __future__ import annotations

import hashlib
import os

from drivers.hypervisor.libvirt.images import detect_image_format, virtual_size
from vmmgr.errors import InvalidArgument
from vmmgr.ports import ImageFacts

CHUNK = 4 * 1024 * 1024


class LocalImageFiles:
    def probe(self, path: str) -> str:
        if not os.path.isfile(path):
            raise InvalidArgument("source_path", f"{path} is not a file on the daemon's machine")
        try:
            return detect_image_format(path)
        except OSError as exc:
            raise InvalidArgument("source_path", f"cannot read {path}: {exc.strerror}") from exc

    def inspect(self, path: str) -> ImageFacts:
        fmt = self.probe(path)
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
        return ImageFacts(
            format=fmt,
            size_bytes=os.path.getsize(path),
            virtual_size_bytes=virtual_size(path),
            sha256=digest.hexdigest(),
        )
