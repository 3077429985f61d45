"""Fixtures: a temporary installation with tiny checkpoints of every family (see model_files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.workflows.model_files import make_installation


@pytest.fixture(scope="session")
def installation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root folder with models/, input/ (written once per test session)."""
    return make_installation(tmp_path_factory.mktemp("installation"))


@pytest.fixture()
def settings(installation: Path, tmp_path: Path) -> Any:
    from engine.settings import Settings

    # fp32: engine-level tests compare results across batch sizes; the CLI tests (main.main)
    # run with the default device policy (bf16 on CPUs with native bf16 units).
    return Settings.for_root(installation, output_dir=tmp_path / "output", extra={"dtype": "fp32"})


@pytest.fixture()
def registry(settings: Any) -> Any:
    import main

    return main.build_registry(custom_nodes=main.ROOT / "custom_nodes", entry_points=False, settings=settings)


@pytest.fixture()
def cli_root(installation: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``main.main([...])`` sees the temporary installation as the repository root."""
    import main

    monkeypatch.setattr(main, "ROOT", installation)
    yield installation
