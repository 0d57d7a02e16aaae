"""TLS contexts and one-line explanations of TLS failures, for every client and server of werkbund.

A client verifies the server's certificate against a CA file (a credentials file's
``ca_certificate``, the platform's ``--broker-ca``) or, without one, against the system's CAs; the
host name is always checked. A failure becomes one sentence that says what to do, never an
``SSLError`` repr.
"""
from __future__ import annotations

import socket
import ssl
from datetime import timezone

from werkbund.platform.errors import InvalidInput, Unavailable


def client_context(ca_certificate: str | None = None) -> ssl.SSLContext:
    """A verifying client context: the server's certificate must chain to ``ca_certificate``
    (a PEM file; default: the system's CAs) and be issued for the host name we connect to."""
    try:
        context = ssl.create_default_context(cafile=ca_certificate)
    except FileNotFoundError:
        raise InvalidInput(f"the CA certificate file {ca_certificate} does not exist") from None
    except (OSError, ssl.SSLError) as exc:
        raise InvalidInput(f"the CA certificate file {ca_certificate} is not a PEM certificate: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def server_context(certificate: str, key: str) -> ssl.SSLContext:
    """A server context with ``certificate`` (its chain, PEM) and its private ``key``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certificate, key)
    except (OSError, ssl.SSLError) as exc:
        raise InvalidInput(f"cannot use the TLS certificate {certificate} with key {key}: {exc}") from None
    return context


def _find(exc: BaseException | None, kind: type):
    """``exc`` or the first exception of ``kind`` in its chain or arguments (pika wraps them)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, kind):
            return exc
        nested = [a for a in getattr(exc, "args", ()) if isinstance(a, BaseException)]
        exc = nested[0] if nested else (exc.__cause__ or exc.__context__)
    return None


def explain(exc: BaseException, what: str, where: str, ca_certificate: str | None = None) -> str | None:
    """One sentence for a TLS failure talking to ``what`` at ``where``, or None if ``exc`` is none."""
    trust = f"the CA in {ca_certificate}" if ca_certificate else "the system's CAs (give ca_certificate)"
    verify = _find(exc, ssl.SSLCertVerificationError)
    if verify is not None:
        reason = verify.verify_message or str(verify)
        if "hostname" in reason.lower() or "ip address mismatch" in reason.lower():
            return f"the TLS certificate of the {what} at {where} is not issued for that name ({reason})"
        return f"the TLS certificate of the {what} at {where} is not trusted by {trust} ({reason})"
    other = _find(exc, ssl.SSLError)
    if other is not None:
        reason = getattr(other, "reason", None) or str(other)
        if "WRONG_VERSION_NUMBER" in str(reason).upper() or "RECORD_LAYER_FAILURE" in str(reason).upper():
            return f"the {what} at {where} does not speak TLS there (is it a plain port?): {reason}"
        return f"TLS with the {what} at {where} failed: {reason}"
    return None


def peer_certificate(host: str, port: int, ca_certificate: str | None = None, timeout: float = 10.0) -> dict:
    """Connect to ``host:port``, verify its certificate and return what it says: ``names`` (the DNS
    names and IP addresses it is issued for), ``subject``, ``issuer``, ``not_after`` (ISO date).
    Raises Unavailable with one sentence when the host cannot be reached or verification fails."""
    from cryptography import x509

    context = client_context(ca_certificate)
    where = f"{host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                context.wrap_socket(raw, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
            version = tls.version()
    except (ssl.SSLError, ssl.CertificateError) as exc:
        raise Unavailable(explain(exc, "server", where, ca_certificate) or str(exc)) from None
    except OSError as exc:
        raise Unavailable(f"cannot reach {where}: {exc.strerror or exc}") from None
    cert = x509.load_der_x509_certificate(der)
    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n) for n in alt.get_values_for_type(x509.DNSName)]
        names += [str(n) for n in alt.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = []
    return {"names": names, "subject": cert.subject.rfc4514_string(), "issuer": cert.issuer.rfc4514_string(),
            "not_after": cert.not_valid_after_utc.astimezone(timezone.utc).date().isoformat(), "version": version}
