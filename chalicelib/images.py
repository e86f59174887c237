"""Images as the API shows them: ``GET /api/images?detail=true`` and ``GET /api/images/{name}``.

``GET /api/images`` itself stays the seed's list of names
(``sandboxes.enabled_images``).  A disabled image is not shown here either: to
an app it does not exist.
"""

from __future__ import annotations

from typing import Any

from pynamodb.exceptions import DoesNotExist, PynamoDBException

from chalicelib.admin import NAME as _NAME  # the names image_create allows
from chalicelib.errors import NotFound, Unavailable
from chalicelib.models import Image

# What one image looks like in the API, in this order.
FIELDS = ("name", "description", "language", "version", "run", "extensions", "run_by_extension")


def to_json(image: Image) -> dict[str, Any]:
    return {
        "name": image.name,
        "description": image.description or "",
        "language": image.language or "",
        "version": image.version or "",
        "run": image.run or "",
        "extensions": list(image.extensions or []),
        "run_by_extension": dict(image.run_by_extension or {}),
    }


def enabled_details() -> list[dict[str, Any]]:
    """Every enabled image, described, by name."""
    try:
        rows = [i for i in Image.scan() if i.enabled]
    except PynamoDBException as e:
        raise Unavailable(f"reading images: {e}") from e
    return [to_json(i) for i in sorted(rows, key=lambda i: i.name)]


def detail(name: str) -> dict[str, Any]:
    """One enabled image, described; ``NotFound`` for one that does not exist or is disabled."""
    if not _NAME.match(name):  # never a key the table could hold: no read needed
        raise NotFound(f"no image {name[:64]!r} (see GET /api/images)")
    try:
        image = Image.get(name)
    except DoesNotExist:
        raise NotFound(f"no image {name[:64]!r} (see GET /api/images)") from None
    except PynamoDBException as e:
        raise Unavailable(f"reading the image: {e}") from e
    if not image.enabled:
        raise NotFound(f"no image {name[:64]!r} (see GET /api/images)")
    return to_json(image)
