"""What may listen where (vmmgr/tls.py), lab certificates, log redaction, client settings."""

from __future__ import annotations

import io
import json
import logging
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from vmmgr import logs, tls
from vmmgr.cli import certs
from vmmgr.cli import config as client_config
from vmmgr.config import Config, load


@pytest.mark.parametrize(("listen", "local"), [
    ("127.0.0.1:50051", True), ("127.8.0.1:1", True), ("localhost:1", True), ("[::1]:1", True),
    ("unix:/run/vmmgr.sock", True), ("/run/vmmgr.sock", True), ("0.0.0.0:50051", False),
    ("[::]:1", False), ("10.0.0.5:50051", False), ("vmmgr.lab:50051", False),
])
def test_is_local(listen: str, local: bool) -> None:
    assert tls.is_local(listen) is local


def test_plaintext_off_loopback_needs_tls_or_insecure(caplog: pytest.LogCaptureFixture) -> None:
    assert tls.check_transport(Config(), "127.0.0.1:0") is None
    with pytest.raises(SystemExit, match="refusing to listen on 0.0.0.0:1 without TLS"):
        tls.check_transport(Config(), "0.0.0.0:1")
    with caplog.at_level(logging.WARNING):
        assert tls.check_transport(Config(insecure=True), "0.0.0.0:1") is None
    assert "INSECURE" in caplog.text


def test_tls_settings_are_checked(tmp_path: Path) -> None:
    certs.init_lab(tmp_path)
    pem = {n: str(tmp_path / f"{n}.pem") for n in ("server", "server-key", "ca")}
    with pytest.raises(SystemExit, match="go together"):
        tls.check_transport(Config(tls_cert=pem["server"]), "0.0.0.0:1")
    with pytest.raises(SystemExit, match="needs tls_ca"):
        tls.check_transport(Config(tls_cert=pem["server"], tls_key=pem["server-key"]),
                            "0.0.0.0:1")
    with pytest.raises(SystemExit, match="cannot read tls_ca"):
        tls.check_transport(Config(tls_cert=pem["server"], tls_key=pem["server-key"],
                                   tls_ca=str(tmp_path / "missing.pem")), "0.0.0.0:1")
    creds = tls.check_transport(Config(tls_cert=pem["server"], tls_key=pem["server-key"],
                                       tls_ca=pem["ca"]), "0.0.0.0:1")
    assert creds is not None


@pytest.mark.parametrize(("mode", "listen", "required"), [
    ("auto", "127.0.0.1:1", False), ("auto", "unix:/x", False), ("auto", "0.0.0.0:1", True),
    ("on", "127.0.0.1:1", True), ("off", "127.0.0.1:1", False),
])
def test_auth_modes(mode: str, listen: str, required: bool) -> None:
    assert tls.auth_required(Config(auth=mode), listen) is required


def test_auth_off_on_the_network_needs_insecure() -> None:
    with pytest.raises(SystemExit, match="anyone on the network"):
        tls.auth_required(Config(auth="off"), "0.0.0.0:1")
    assert tls.auth_required(Config(auth="off", insecure=True), "0.0.0.0:1") is False
    with pytest.raises(SystemExit, match="auth must be one of"):
        tls.auth_required(Config(auth="maybe"), "127.0.0.1:1")


def test_daemon_settings_from_file_env_and_flags(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "vmmgrd.toml"
    f.write_text('auth = "on"\ntls_cert = "/file.pem"\nmetrics_listen = ""\n')
    monkeypatch.setenv("VMMGR_TLS_CERT", "/env.pem")
    cfg = load(["--config", str(f), "--insecure", "--unix-socket", "/run/v.sock"])
    assert (cfg.auth, cfg.tls_cert, cfg.metrics_listen) == ("on", "/env.pem", "")
    assert cfg.insecure is True and cfg.unix_socket == "/run/v.sock"
    assert load(["--config", str(f)]).insecure is False


def test_lab_certificates(tmp_path: Path) -> None:
    paths = certs.init_lab(tmp_path, server_names=["vmmgr.lab", "10.0.0.5"],
                           client_name="alice")
    assert len(paths) == 6
    for p in paths:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o600 if p.name.endswith("-key.pem") else 0o644), p
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    client = x509.load_pem_x509_certificate((tmp_path / "client.pem").read_bytes())
    server.verify_directly_issued_by(ca)
    client.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"vmmgr.lab", "localhost"}
    assert {str(i) for i in sans.get_values_for_type(x509.IPAddress)} == {
        "10.0.0.5", "127.0.0.1", "::1"}
    eku = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert client.subject.rfc4514_string().startswith("CN=alice")
    with pytest.raises(FileExistsError):
        certs.init_lab(tmp_path)
    more = certs.issue_client(tmp_path, "bob")
    x509.load_pem_x509_certificate(more[0].read_bytes()).verify_directly_issued_by(ca)


def test_redaction_of_token_secrets() -> None:
    assert logs.redact("token vmm_AbC-123_xyzxyzxyz used") == "token [REDACTED] used"
    assert logs.redact("authorization: Bearer s3cr3t, next") == \
        "authorization: Bearer [REDACTED], next"
    assert logs.redact("nothing to hide") == "nothing to hide"


def test_log_records_carry_the_request_id_and_never_a_secret() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.ContextFilter())
    logger = logging.getLogger("vmmgr.test.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        token = logs.request_id.set("rid-42")
        logger.info("created %s", "vmm_abcdefghijklmnopqrstuvwxyz")
        logs.request_id.reset(token)
        logger.info("outside a call")
    finally:
        logger.removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["request_id"] == "rid-42" and first["message"] == "created [REDACTED]"
    assert "request_id" not in second


def test_client_settings_precedence(tmp_path: Path) -> None:
    f = tmp_path / "config.toml"
    f.write_text('endpoint = "file:1"\ntoken = "from-file"\nca = "~/ca.pem"\n')
    cfg = client_config.load(f, env={})
    assert (cfg.endpoint, cfg.token, cfg.secure) == ("file:1", "from-file", True)
    assert cfg.ca == str(Path.home() / "ca.pem")
    cfg = client_config.load(f, env={"VMMGR_ENDPOINT": "env:2", "VMMGR_TOKEN": "from-env"})
    assert (cfg.endpoint, cfg.token) == ("env:2", "from-env")
    cfg = client_config.load(f, env={"VMMGR_TOKEN": "from-env"}, flags={"token": "flag",
                                                                        "endpoint": None})
    assert (cfg.endpoint, cfg.token) == ("file:1", "flag")
    # no file at the default place: defaults
    cfg = client_config.load(env={"XDG_CONFIG_HOME": str(tmp_path / "none")})
    assert cfg == client_config.ClientConfig()
    tf = tmp_path / "token"
    tf.write_text("vmm_in_a_file\n")
    assert client_config.load(env={"VMMGR_CONFIG": str(tmp_path / "absent.toml"),
                                   "VMMGR_TOKEN_FILE": str(tf)}).secret() == "vmm_in_a_file"


def test_client_settings_errors_name_the_setting(tmp_path: Path) -> None:
    f = tmp_path / "config.toml"
    f.write_text('endpoint = "x"\ncolour = "red"\n')
    with pytest.raises(client_config.ClientConfigError, match="unknown setting 'colour'"):
        client_config.load(f, env={})
    f.write_text('cert = "/c.pem"\n')
    with pytest.raises(client_config.ClientConfigError, match="cert and key go together"):
        client_config.load(f, env={})
    with pytest.raises(client_config.ClientConfigError, match="cannot read"):
        client_config.load(tmp_path / "missing.toml", env={})
