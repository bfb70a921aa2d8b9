"""ImageService servicer."""

from __future__ import annotations

from typing import TypeAlias

import grpc

from vmmgr.api import convert
from vmmgr.api.errors import servicer
from vmmgr.services.images import ImageService
from vmmgr.v1 import image_pb2, image_pb2_grpc

Ctx: TypeAlias = grpc.ServicerContext


@servicer
class ImageServicer(image_pb2_grpc.ImageServiceServicer):
    def __init__(self, images: ImageService) -> None:
        self.images = images

    def ImportImage(
        self, request: image_pb2.ImportImageRequest, context: Ctx
    ) -> image_pb2.ImportImageResponse:
        op = self.images.import_image(request.name, request.source_path, request.sha256)
        return image_pb2.ImportImageResponse(operation=convert.operation(op))

    def GetImage(
        self, request: image_pb2.GetImageRequest, context: Ctx
    ) -> image_pb2.GetImageResponse:
        img = self.images.get(request.name)
        return image_pb2.GetImageResponse(image=convert.image(img, self.images.replicas(img.name)))

    def ListImages(
        self, request: image_pb2.ListImagesRequest, context: Ctx
    ) -> image_pb2.ListImagesResponse:
        return image_pb2.ListImagesResponse(
            images=[
                convert.image(i, self.images.replicas(i.name)) for i in self.images.list_images()
            ]
        )

    def DeleteImage(
        self, request: image_pb2.DeleteImageRequest, context: Ctx
    ) -> image_pb2.DeleteImageResponse:
        self.images.delete(request.name)
        return image_pb2.DeleteImageResponse()
