"""Self-signed PKI for the test control plane, made with the `openssl` CLI.

`make_pki(dir)` writes a CA, the apiserver serving cert (SANs 127.0.0.1, localhost and the
first service IP), an admin client cert (CN=epnas-admin, O=system:masters) and the
service-account signing key pair, and returns their paths.
"""

from __future__ import annotations

import dataclasses
import pathlib
import subprocess


@dataclasses.dataclass(frozen=True)
class Pki:
    ca_cert: pathlib.Path
    ca_key: pathlib.Path
    serving_cert: pathlib.Path
    serving_key: pathlib.Path
    admin_cert: pathlib.Path
    admin_key: pathlib.Path
    sa_key: pathlib.Path
    sa_pub: pathlib.Path


def _openssl(*args: str, cwd: pathlib.Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _signed_cert(
    directory: pathlib.Path, stem: str, subject: str, extensions: str
) -> tuple[pathlib.Path, pathlib.Path]:
    ext_file = directory / f"{stem}.ext"
    ext_file.write_text(extensions)
    _openssl(
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        f"{stem}.key",
        "-out",
        f"{stem}.csr",
        "-subj",
        subject,
        cwd=directory,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{stem}.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "7",
        "-out",
        f"{stem}.crt",
        "-extfile",
        ext_file.name,
        cwd=directory,
    )
    return directory / f"{stem}.crt", directory / f"{stem}.key"


def make_pki(directory: pathlib.Path, *, service_ip: str) -> Pki:
    """Create every key and certificate the control plane needs under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "7",
        "-subj",
        "/CN=epnas-test-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        cwd=directory,
    )
    serving_cert, serving_key = _signed_cert(
        directory,
        "apiserver",
        "/CN=kube-apiserver",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        f"subjectAltName=IP:127.0.0.1,IP:{service_ip},DNS:localhost,DNS:kubernetes,"
        "DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n",
    )
    admin_cert, admin_key = _signed_cert(
        directory,
        "admin",
        "/O=system:masters/CN=epnas-admin",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
    )
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "sa.key", cwd=directory)
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=directory)
    return Pki(
        ca_cert=directory / "ca.crt",
        ca_key=directory / "ca.key",
        serving_cert=serving_cert,
        serving_key=serving_key,
        admin_cert=admin_cert,
        admin_key=admin_key,
        sa_key=directory / "sa.key",
        sa_pub=directory / "sa.pub",
    )
