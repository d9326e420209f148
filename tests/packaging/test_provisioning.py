"""provision-identity (on a node) and plant-ca-sign (at the plant CA): what they make, and
every bad input refused with a clear message and nothing half-written."""

import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT = Path(__file__).resolve().parents[2]
PROVISION = ROOT / "firmware_scripts" / "provision-identity"
CA_SIGN = ROOT / "firmware_scripts" / "plant-ca-sign"


def run(*args: object, ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, check=False, timeout=60
    )
    assert (done.returncode == 0) == ok, (done.returncode, done.stderr)
    return done


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    run(CA_SIGN, "init", tmp_path / "ca")
    return tmp_path / "ca"


def cn(cert: x509.Certificate | x509.CertificateSigningRequest) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_a_node_key_and_request_signed_into_a_client_certificate(tmp_path: Path, ca: Path) -> None:
    out = tmp_path / "tls"
    csr_path = Path(run(PROVISION, "--config", ROOT / "packaging" / "edge.toml", "--dir", out).stdout.strip())
    key = out / "box-01.key"
    assert csr_path == out / "box-01.csr"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    csr = x509.load_pem_x509_csr(csr_path.read_bytes())
    assert cn(csr) == "box-01"  # node_id and plant_id read from the config
    assert csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "plant1"

    cert_path = Path(run(CA_SIGN, "sign", ca, csr_path).stdout.strip())
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    ca_cert = x509.load_pem_x509_certificate((ca / "ca.pem").read_bytes())
    cert.verify_directly_issued_by(ca_cert)
    assert cn(cert) == "box-01"
    assert cert.public_key() == csr.public_key()
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert (ca / "issued" / "box-01.pem").read_bytes() == cert_path.read_bytes()


def test_server_certificates_name_their_hosts(tmp_path: Path, ca: Path) -> None:
    csr = run(PROVISION, "--id", "broker", "--dir", tmp_path).stdout.strip()
    cert_path = run(CA_SIGN, "sign", ca, csr, "--server", "mqtt.plant,10.0.0.5").stdout.strip()
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mqtt.plant"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]


@pytest.mark.parametrize("bad", ["", "a/b", "-box", "box 1", "x" * 65, "../etc", "box;rm"])
def test_provision_refuses_a_bad_node_id_and_writes_nothing(tmp_path: Path, bad: str) -> None:
    done = run(PROVISION, "--id", bad, "--dir", tmp_path / "tls", ok=False)
    assert done.stderr.startswith("provision-identity: error: ")
    assert not (tmp_path / "tls").exists()


def test_provision_never_replaces_a_key_without_force(tmp_path: Path) -> None:
    run(PROVISION, "--id", "box-01", "--dir", tmp_path)
    before = (tmp_path / "box-01.key").read_bytes()
    done = run(PROVISION, "--id", "box-01", "--dir", tmp_path, ok=False)
    assert "box-01.key exists; give --force" in done.stderr
    assert (tmp_path / "box-01.key").read_bytes() == before
    run(PROVISION, "--id", "box-01", "--dir", tmp_path, "--force")
    assert (tmp_path / "box-01.key").read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["box-01.csr", "box-01.key"]


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("[identity\nnode_id = 'x'\n", "edge.toml: Expected ']'"),  # malformed TOML
        ("role = 'edge'\n", "give --id NODE_ID or --config FILE"),  # no node_id
        ("[identity]\nnode_id = 'a/b'\n", "node id 'a/b' must be"),
    ],
)
def test_provision_refuses_a_bad_config(tmp_path: Path, content: str, why: str) -> None:
    config = tmp_path / "edge.toml"
    config.write_text(content)
    done = run(PROVISION, "--config", config, "--dir", tmp_path / "tls", ok=False)
    assert done.stderr.startswith("provision-identity: error: ") and why in done.stderr
    assert not (tmp_path / "tls").exists()


def test_the_ca_refuses_garbage_truncated_and_tampered_requests(tmp_path: Path, ca: Path) -> None:
    csr = Path(run(PROVISION, "--id", "box-01", "--dir", tmp_path).stdout.strip())
    good = csr.read_text()
    lines = good.splitlines()
    cases = {
        "garbage.csr": "not a request\n",
        "empty.csr": "",
        "truncated.csr": "\n".join(lines[: len(lines) // 2]) + "\n",
        # one base64 character changed in the signed body: the signature no longer matches
        "tampered.csr": good.replace(lines[3], lines[3][:10] + ("A" if lines[3][10] != "A" else "B") + lines[3][11:]),
    }
    for name, text in cases.items():
        path = tmp_path / name
        path.write_text(text)
        done = run(CA_SIGN, "sign", ca, path, ok=False)
        assert "is not a valid certificate signing request" in done.stderr, name
    assert list((ca / "issued").iterdir()) == []
    done = run(CA_SIGN, "sign", ca, tmp_path / "missing.csr", ok=False)
    assert "cannot read" in done.stderr


def test_the_ca_refuses_a_cn_that_is_not_a_node_id(tmp_path: Path, ca: Path) -> None:
    key, csr = tmp_path / "k.pem", tmp_path / "r.csr"
    run("openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key)
    run("openssl", "req", "-new", "-key", key, "-subj", "/CN=box 1+evil/O=x", "-out", csr)
    done = run(CA_SIGN, "sign", ca, csr, ok=False)
    assert "is not a node id" in done.stderr


def test_the_ca_ignores_requested_extensions(tmp_path: Path, ca: Path) -> None:
    """A request asking to be a CA gets a leaf certificate all the same."""
    key, csr = tmp_path / "k.pem", tmp_path / "box-09.csr"
    run("openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key)
    run("openssl", "req", "-new", "-key", key, "-subj", "/CN=box-09",
        "-addext", "basicConstraints=critical,CA:TRUE", "-out", csr)
    cert_path = run(CA_SIGN, "sign", ca, csr).stdout.strip()
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_one_certificate_per_name_unless_renewed(tmp_path: Path, ca: Path) -> None:
    csr = run(PROVISION, "--id", "box-01", "--dir", tmp_path).stdout.strip()
    first = Path(run(CA_SIGN, "sign", ca, csr).stdout.strip()).read_bytes()
    done = run(CA_SIGN, "sign", ca, csr, ok=False)
    assert "already issued" in done.stderr
    assert Path(tmp_path / "box-01.pem").read_bytes() == first
    second = Path(run(CA_SIGN, "sign", ca, csr, "--renew").stdout.strip()).read_bytes()
    assert second != first


def test_one_ca_per_plant_and_signing_needs_one(tmp_path: Path, ca: Path) -> None:
    key = (ca / "ca.key").read_bytes()
    assert "a plant has one CA" in run(CA_SIGN, "init", ca, ok=False).stderr
    assert (ca / "ca.key").read_bytes() == key
    assert stat.S_IMODE((ca / "ca.key").stat().st_mode) == 0o600
    csr = run(PROVISION, "--id", "box-01", "--dir", tmp_path).stdout.strip()
    assert "is not a CA" in run(CA_SIGN, "sign", tmp_path / "nothing", csr, ok=False).stderr
