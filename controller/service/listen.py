"""Where the clinic service listens, and what it refuses: kept free of the web stack's
imports so that `modctl --help` and the other commands stay quick to start."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8470
# A login expires after this long without a request (a shift, with margin).
DEFAULT_IDLE_HOURS = 12.0


@dataclass(frozen=True)
class Listen:
    host: str
    port: int
    tls_cert: str | None = None
    tls_key: str | None = None
    insecure_http: bool = False

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen_problem(listen: Listen) -> str | None:
    """Why these listening options are refused, or None."""
    if bool(listen.tls_cert) != bool(listen.tls_key):
        return "--tls-cert and --tls-key go together"
    if not is_loopback(listen.host) and not listen.tls_cert and not listen.insecure_http:
        return (f"--host {listen.host} is reachable from other machines: give --tls-cert and "
                "--tls-key (or --insecure-http on a network you trust; it is logged and "
                "shown on every page)")
    return None
