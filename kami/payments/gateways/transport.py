"""What every channel's HTTP client shares: redirects are never followed, and a thread that
must not wait (`kernel.waiting`) never reaches the network."""

from __future__ import annotations

import urllib.request
from typing import Any

from kami.kernel import waiting


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """No channel's API redirects; following a redirect would send a signed request, an API key
    or a merchant key to wherever the `Location` points."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class NoWaiting(urllib.request.BaseHandler):
    """Before any request leaves: the web server's event loop runs short calls itself and must
    not wait on a channel's answer; the call is then run again on a worker thread."""

    handler_order = 100  # before every other pre-processor

    def http_request(self, request: urllib.request.Request) -> urllib.request.Request:
        waiting.check_network(f"a call to {request.host}")
        return request

    https_request = http_request


def opener() -> urllib.request.OpenerDirector:
    """An opener for a channel's API: the standard handlers, redirects refused."""
    return urllib.request.build_opener(NoRedirect, NoWaiting)
