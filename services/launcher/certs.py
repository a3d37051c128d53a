"""TLS material for nats-server: a private CA and a server certificate signed by it.

The embedded stack makes a fresh pair when it listens beyond loopback (`--listen`),
so no credential crosses a network in clear text; an operator can make one for
compose or an external server the same way:

    python -m services.launcher.certs --out tls/ --host nats --host nats.example.com --host 203.0.113.7

Clients trust the CA file (ca.pem, RL_NATS_CA); nats-server gets server.pem and
server-key.pem. The CA's own key is not written out: nothing else is ever signed
with it, so a new pair is made rather than a certificate added.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclasses.dataclass(frozen=True)
class CertFiles:
    ca: Path  # the CA certificate clients verify the server with
    cert: Path  # the server's certificate (chain: server, CA)
    key: Path  # the server's private key (mode 0600)


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for h in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def make_certificates(out_dir: str | Path, hosts: list[str], days: int = 825) -> CertFiles:
    """A new CA and a server certificate for `hosts` (names or addresses) in out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    valid = {"not_valid_before": now - datetime.timedelta(minutes=5),
             "not_valid_after": now + datetime.timedelta(days=days)}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("accel-impala NATS CA")).issuer_name(_name("accel-impala NATS CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(valid["not_valid_before"]).not_valid_after(valid["not_valid_after"])
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(valid["not_valid_before"]).not_valid_after(valid["not_valid_after"])
            .add_extension(_san(hosts), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = CertFiles(out / "ca.pem", out / "server.pem", out / "server-key.pem")
    pem = serialization.Encoding.PEM
    files.ca.write_bytes(ca.public_bytes(pem))
    files.cert.write_bytes(cert.public_bytes(pem) + ca.public_bytes(pem))
    fd = os.open(files.key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return files


def main() -> None:
    p = argparse.ArgumentParser(description="Make a CA and a nats-server certificate for the given hosts.")
    p.add_argument("--out", required=True, help="directory for ca.pem, server.pem, server-key.pem")
    p.add_argument("--host", action="append", required=True,
                   help="a name or address clients use for the server (repeat; compose: nats, plus the public name)")
    p.add_argument("--days", type=int, default=825)
    a = p.parse_args()
    files = make_certificates(a.out, a.host, a.days)
    print(f"CA (give it to every client, RL_NATS_CA): {files.ca}\nserver certificate: {files.cert}\n"
          f"server key: {files.key}")


if __name__ == "__main__":
    main()
