"""Certificates for TLS tests: a CA from trustme, a server certificate for 127.0.0.1 and
localhost, and a client certificate for mTLS, written as PEM files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pki:
    """PEM files: the CA, the server's pair, and a client pair the CA signed."""

    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path


def make_pki(where: Path) -> Pki:
    import trustme

    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("robot-1")
    pki = Pki(where / "ca.pem", where / "cert.pem", where / "key.pem",
              where / "client.pem", where / "client-key.pem")  # fmt: skip
    ca.cert_pem.write_to_path(str(pki.ca))
    server.cert_chain_pems[0].write_to_path(str(pki.cert))
    server.private_key_pem.write_to_path(str(pki.key))
    client.cert_chain_pems[0].write_to_path(str(pki.client_cert))
    client.private_key_pem.write_to_path(str(pki.client_key))
    return pki
