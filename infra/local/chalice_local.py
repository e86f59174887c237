"""``chalice local``, with Nagle's algorithm off on the sockets it answers on.

Chalice's development server (Python's ``http.server``) writes a response's
headers and its body in two ``send`` calls.  With Nagle's algorithm on, the
body waits for the client to acknowledge the headers, and clients delay that
acknowledgement by up to 40 ms: every answer paid ~40 ms for nothing.  This
runs Chalice's own command line (``python -m infra.local.chalice_local local
--port ...`` takes exactly ``chalice local``'s arguments) after setting the
standard ``socketserver`` switch that turns the delay off.
"""

from __future__ import annotations

import sys

from chalice import local
from chalice.cli import main

local.ChaliceRequestHandler.disable_nagle_algorithm = True

if __name__ == "__main__":
    sys.exit(main())
