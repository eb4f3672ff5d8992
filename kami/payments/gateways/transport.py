"""What every channel's HTTP client shares: redirects are never followed."""

from __future__ import annotations

import urllib.request
from typing import Any


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """No channel's API redirects; following a redirect would send a signed request, an API key
    or a merchant key to wherever the `Location` points."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def opener() -> urllib.request.OpenerDirector:
    """An opener for a channel's API: the standard handlers, redirects refused."""
    return urllib.request.build_opener(NoRedirect)
