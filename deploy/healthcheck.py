"""Health check of this node's own listener: exit 0 when ``GET /healthz`` answers 200.

Used by the container's HEALTHCHECK; reads the same variables as ``roundtable serve``.
With built-in TLS it speaks HTTPS to 127.0.0.1 without checking the certificate's name
(the certificate is for the public name, and this is our own process).
"""

import os
import ssl
import sys
import urllib.request


def main() -> int:
    host = os.environ.get("ROUNDTABLE_HOST", "127.0.0.1").strip()
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    port = os.environ.get("ROUNDTABLE_PORT", "8080").strip() or "8080"
    context = None
    scheme = "http"
    if os.environ.get("ROUNDTABLE_TLS_CERT", "").strip():
        scheme = "https"
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    url = f"{scheme}://{host}:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=4, context=context) as resp:
            return 0 if resp.status == 200 else 1
    except Exception as exc:  # any failure is "unhealthy", said in one line
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
