"""Certificates for TLS test servers, made on the spot (``trustme``, a test dependency)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote


@dataclass(frozen=True)
class TLSFiles:
    """A private CA and a server certificate for 127.0.0.1/localhost, as PEM files."""

    ca: str
    cert: str
    key: str

    @classmethod
    def generate(cls, directory: str) -> TLSFiles:
        import trustme

        ca = trustme.CA()
        server = ca.issue_cert("127.0.0.1", "localhost")
        files = cls(*(os.path.join(directory, n) for n in ("ca.pem", "cert.pem", "key.pem")))
        ca.cert_pem.write_to_path(files.ca)
        server.cert_chain_pems[0].write_to_path(files.cert)
        server.private_key_pem.write_to_path(files.key)
        return files

    def server_args(self) -> tuple[str, ...]:
        """redis-server options: TLS only (no plain port), client certificates not asked."""
        return (
            "--tls-cert-file", self.cert,
            "--tls-key-file", self.key,
            "--tls-ca-cert-file", self.ca,
            "--tls-auth-clients", "no",
        )  # fmt: skip

    def client_options(self) -> dict[str, Any]:
        """redis-py options that trust this CA."""
        return {"ssl": True, "ssl_ca_certs": self.ca}

    def url_query(self) -> str:
        return f"ssl_ca_certs={quote(self.ca, safe='')}"
