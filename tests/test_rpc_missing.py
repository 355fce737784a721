"""A build without RPC (no ADAMAS_BUILD_RPC) says so clearly: simulated in-process, so it runs with either build."""
from __future__ import annotations

import pytest

import adamas_gguf
from adamas_gguf import _build_info, cli, rpc


@pytest.fixture
def no_rpc(monkeypatch):
    monkeypatch.setattr(_build_info, "RPC", False)


def test_llama_refuses(no_rpc, tiny_model):
    with pytest.raises(ValueError, match="this adamas_gguf build has no RPC backend; rebuild it with "
                                         "-Ccmake.define.ADAMAS_BUILD_RPC=ON"):
        adamas_gguf.Llama(str(tiny_model), rpc_servers="127.0.0.1:50052", verbose=False)
    assert not rpc.available()


def test_rpc_server_command_refuses(no_rpc, capsys):
    assert cli.main(["rpc-server", "--port", "50052"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("adamas_gguf: error: this adamas_gguf build has no rpc-server; build it with `make rpc`"), err


def test_run_rpc_refuses_before_loading(no_rpc, capsys):
    # the model does not exist: the RPC error comes first, before anything is loaded
    assert cli.main(["run", "/nonexistent.gguf", "--rpc", "127.0.0.1:50052", "-p", "x"]) == 1
    err = capsys.readouterr().err
    assert "--rpc: this adamas_gguf build has no RPC backend" in err and "nonexistent" not in err, err
