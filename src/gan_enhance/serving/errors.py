"""The service's request errors and the hints their fixes quote.

Every refused request gets a 4xx JSON body {"error": <what is wrong>, "fix": <what to do>}.
"""

from __future__ import annotations

from typing import Any

SUPPORTED = "PNG, JPEG, WebP, TIFF or BMP"
CURL_HINT = "e.g. curl -F image=@photo.png -F format=png http://127.0.0.1:3000/enhance -o out.png"
MASK_HINT = (
    "send field 'mask': an image of the same size, white (gray > 127) where to fill in; "
    "e.g. curl -F image=@photo.png -F mask=@holes.png http://127.0.0.1:3000/enhance -o filled.png"
)
GENERATE_HINT = 'send JSON {"n": 8, "seed": 0}: n samples (1 to the limit), the same seed gives the same samples'
BATCH_HINT = (
    'send JSON {"images": [image, ...]} where each image is an H x W x 3 nested list of integers 0-255 '
    "(uint8 RGB); see the schema at /docs.json"
)


class RequestError(Exception):
    """A request the service refuses: HTTP status, what is wrong, and what to do instead."""

    def __init__(self, status: int, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.status, self.problem, self.fix = status, problem, fix

    def body(self) -> dict[str, Any]:
        """The JSON body of the refusal."""
        return {"error": self.problem, "fix": self.fix}
