"""The server's network options, checked before anything loads: ``--host`` resolves, and each port
is free to listen on. A bad value is a usage error (exit 2) naming its option. KServe-free."""
from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as Late

from ..errors import UsageError

def check_port_free(host: str, port: int, flag: str) -> None:
    """A port another process listens on is a usage error before anything loads, naming the option.
    Checked by connecting, not only by binding: gRPC listens with SO_REUSEPORT, which lets a second
    server bind the same port and share its connections unseen."""
    target = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host in ("::", "[::]") else host.strip("[]")
    family = socket.AF_INET6 if ":" in target else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        held = probe.connect_ex((target, port)) == 0
    if not held:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host.strip("[]") if ":" in target else host, port))
            except OSError as e:
                raise UsageError(f"{flag} {port}: cannot listen on {host}:{port} ({e.strerror or e}); choose another "
                                 f"{flag}") from None
        return
    raise UsageError(f"{flag} {port}: another process listens on {host}:{port}; stop it or choose another {flag}")


#: Seconds a --host name may take to resolve before it is called unresolvable.
RESOLVE_TIMEOUT_S = 5.0


def check_host(host: str) -> None:
    """``--host`` resolves to an address of this machine's, within :data:`RESOLVE_TIMEOUT_S`: else a
    usage error (exit 2) before anything loads, naming the option."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="unioncam-resolve")
    try:
        pool.submit(socket.getaddrinfo, host.strip("[]") or "0.0.0.0", None, 0, socket.SOCK_STREAM).result(
            RESOLVE_TIMEOUT_S)
    except Late:
        raise UsageError(f"--host {host}: did not resolve within {RESOLVE_TIMEOUT_S:g} s; give an IP address "
                         "(0.0.0.0: every interface, 127.0.0.1: this machine only)") from None
    except (OSError, UnicodeError) as e:
        raise UsageError(f"--host {host}: does not resolve ({getattr(e, 'strerror', None) or e}); give an IP address "
                         "or a name of this machine (0.0.0.0: every interface, 127.0.0.1: this machine only)") from None
    finally:
        pool.shutdown(wait=False)
