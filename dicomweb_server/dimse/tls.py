"""DIMSE over TLS (PS3.15 B.1, the "Basic TLS Secure Transport Connection Profile").

TLS 1.2 or later. With a CA file the peer must present a certificate that CA signed
(mutual authentication, which PS3.15 B.1 expects between DICOM nodes); without one,
any client may connect over an encrypted channel.
"""

from __future__ import annotations

import ssl

from dicomweb_server.config import Settings


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """The listener's SSL context, or None when TLS is not configured."""
    if settings.dimse_tls_cert is None or settings.dimse_tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.dimse_tls_cert, settings.dimse_tls_key)
    if settings.dimse_tls_ca is not None:
        context.load_verify_locations(cafile=settings.dimse_tls_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context
