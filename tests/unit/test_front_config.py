"""The front's nginx configuration (``infra/local/front.py``): one pure function of its settings."""

from __future__ import annotations

from pathlib import Path

from infra.local.front import METHODS, Front, config


def test_the_body_cap_timeouts_and_connection_limit_come_from_the_settings() -> None:
    text = config(Front(8000, 8001, 10 * 1024 * 1024, conns_per_client=12), Path("/w"), Path("/l"), Path("/p"))
    assert "client_max_body_size 10485760;" in text
    assert "client_header_timeout 10s;" in text and "client_body_timeout 10s;" in text
    assert "limit_conn per_client 12;" in text
    assert "listen 127.0.0.1:8000;" in text and "server 127.0.0.1:8001;" in text
    assert f"!~ ^({'|'.join(METHODS)})$" in text
    assert "ssl" not in text


def test_a_certificate_turns_on_tls_on_the_same_port() -> None:
    front = Front(8443, 8001, 1024, tls_cert="/c.pem", tls_key="/k.pem")
    text = config(front, Path("/w"), Path("/l"), Path("/p"))
    assert "listen 127.0.0.1:8443 ssl;" in text
    assert "ssl_certificate /c.pem;" in text and "ssl_certificate_key /k.pem;" in text
    assert front.url == "https://127.0.0.1:8443"
