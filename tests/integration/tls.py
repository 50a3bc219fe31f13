"""A self-signed certificate for TLS tests, made with the ``cryptography`` package."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
from pathlib import Path
from typing import Any


def self_signed(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """Write ``cert.pem`` and ``key.pem`` (EC P-256, valid for ``host`` as IP and DNS name)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    alt: list[x509.GeneralName] = [x509.DNSName(host)]
    with contextlib.suppress(ValueError):  # a host name, not an address
        alt.append(x509.IPAddress(ipaddress.ip_address(host)))
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class TlsProxy:
    """Terminates TLS on ``port`` and forwards the plain bytes to ``upstream`` (host, port).

    Tansu 0.6 cannot serve TLS itself (see ``EmbeddedBroker.advertised``), so TLS tests put
    this in front of it and let the broker advertise the proxy's address: every connection a
    client makes, bootstrap and partition leaders alike, goes through TLS. Plain connections
    fail the handshake and are dropped; ``handshakes`` counts the TLS ones.
    """

    def __init__(self, cert: Path, key: Path, upstream: tuple[str, int], port: int) -> None:
        import ssl

        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(str(cert), str(key))
        self.upstream, self.port = upstream, port
        self.handshakes = 0
        self.refused = 0
        self._loop: Any = None
        self._thread: Any = None

    def __enter__(self) -> TlsProxy:
        import asyncio
        import threading

        ready = threading.Event()

        async def pipe(reader: Any, writer: Any) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

        async def handle(reader: Any, writer: Any) -> None:
            self.handshakes += 1
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            except OSError:
                writer.close()
                return
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            loop.set_exception_handler(lambda _loop, _ctx: None)  # failed handshakes: expected
            server = loop.run_until_complete(asyncio.start_server(
                handle, "127.0.0.1", self.port, ssl=self.ctx))
            ready.set()
            try:
                loop.run_forever()
            finally:
                server.close()
                loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
