"""``main.py serve`` refuses an unsafe bind before starting anything."""

from __future__ import annotations

import argparse

import pytest

from web import cli


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.configure(parser)
    args = parser.parse_args(list(argv))

    def must_not_build(**kwargs):
        raise AssertionError("the server must not be built for an unsafe bind")

    args.build_settings = must_not_build
    args.build_registry = must_not_build
    return args


def test_defaults_bind_localhost():
    args = parse()
    assert (args.host, args.port, args.listen) == ("127.0.0.1", 8188, None)
    assert parse("--listen").listen == "0.0.0.0"


@pytest.mark.parametrize("argv", [("--listen",), ("--host", "0.0.0.0"), ("--listen", "192.168.0.2")])
def test_non_local_bind_without_token_is_refused(argv, capsys, monkeypatch):
    monkeypatch.delenv("LATENTFLOW_AUTH_TOKEN", raising=False)
    args = parse(*argv)
    args.auth_token = None
    assert cli.run(args) == 2
    assert "--auth-token" in capsys.readouterr().err
