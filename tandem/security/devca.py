"""A development CA and a certificate per service: ``python -m tandem.security.devca --out DIR``
(``make certs``). Not for production: the CA's key lies beside the certificates it signed.

DIR gets ``ca.pem`` (the CA every service trusts: ``--tls-ca``), ``ca-key.pem``, and for each
name ``<name>.pem`` / ``<name>-key.pem`` (``--tls-cert`` / ``--tls-key``). Every certificate is
valid for server and client authentication (a service is both), for its name, ``localhost``,
127.0.0.1, ::1 and the ``--hosts`` given (compose service names, a Kubernetes Service's DNS
name). Keys are ECDSA P-256, written readable by their owner only.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVICES = ("router", "kvstore", "decode", "prefill", "planner", "launcher", "redis", "client")
"""The certificates made by default: one per service, the launcher's (its health probes),
Redis's, and one for a client (tests, grpcurl, an operator's tools)."""
LOOPBACK = ("localhost", "127.0.0.1", "::1")
VALID_DAYS = 30


@dataclasses.dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tandem dev CA"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _alt_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(pem)


def _builder(subject: x509.Name, issuer: x509.Name, public: ec.EllipticCurvePublicKey,
             now: datetime.datetime) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(public).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS)))


def make_ca(out: Path, label: str = "tandem dev CA") -> Issued:
    """A self-signed CA in ``out`` (ca.pem, ca-key.pem)."""
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (_builder(_name(label), _name(label), key.public_key(), now)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .sign(key, hashes.SHA256()))
    issued = Issued(out / "ca.pem", out / "ca-key.pem")
    issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(issued.key, key)
    return issued


def issue(out: Path, name: str, hosts: Sequence[str] = (), label: str = "tandem dev CA"
          ) -> Issued:
    """``<name>.pem`` / ``<name>-key.pem`` in ``out``, signed by the CA there."""
    ca_cert = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((out / "ca-key.pem").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (_builder(_name(name), ca_cert.subject, key.public_key(), now)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(_alt_names([name, *LOOPBACK, *hosts])),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    issued = Issued(out / f"{name}.pem", out / f"{name}-key.pem")
    issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(issued.key, key)
    return issued


def make_all(out: Path, names: Sequence[str] = SERVICES, hosts: Sequence[str] = (),
             label: str = "tandem dev CA") -> dict[str, Issued]:
    """A fresh CA and one certificate per name."""
    make_ca(out, label)
    return {name: issue(out, name, hosts, label) for name in names}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tandem.security.devca",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="directory to write into")
    parser.add_argument("--names", default=",".join(SERVICES),
                        help="comma-separated certificate names (default: %(default)s)")
    parser.add_argument("--hosts", default="",
                        help="comma-separated extra host names / IPs in every certificate")
    args = parser.parse_args(argv)
    out = Path(args.out)
    names = [n for n in args.names.split(",") if n]
    make_all(out, names, [h for h in args.hosts.split(",") if h])
    print(f"dev CA and {len(names)} certificates in {out} (CA: {out / 'ca.pem'})")


if __name__ == "__main__":
    main()
