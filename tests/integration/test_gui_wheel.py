"""The GUI ships in a plain (non-editable) install: the wheel `pip install .` builds holds every
file of shared/gui, and a control plane's API served from that install answers each of them.

The source tree is copied first, so the build writes nothing into the checkout (build/, egg-info).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
from zonemesh.shared.api.gui import GUI_DIR, load_assets

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
IGNORED = shutil.ignore_patterns(
    ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "results", "*.db*"
)

SERVE_EVERY_ASSET = textwrap.dedent(
    """
    import asyncio, json, sys
    from aiohttp.test_utils import TestClient, TestServer
    from zonemesh.shared.api import gui
    from zonemesh.shared.api.app import build_api_app
    from zonemesh.shared.resources.manager import ResourceManager
    from zonemesh.shared.store.memory import MemoryStore

    async def main():
        app = build_api_app(ResourceManager(MemoryStore()), {}, {})
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            found = {}
            for path in ["", *gui.load_assets()]:
                resp = await client.get("/gui/" + path)
                found[path] = [resp.status, len(await resp.read())]
        print(json.dumps({"module": gui.__file__, "served": found}))

    asyncio.run(main())
    """
)


def test_the_wheel_ships_the_gui_and_an_install_of_it_serves_every_file(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=IGNORED)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("zonemesh-*.whl")
    expected = {f"zonemesh/shared/gui/{path}": asset.body for path, asset in load_assets(GUI_DIR).items()}
    assert "zonemesh/shared/gui/index.html" in expected and "zonemesh/shared/gui/js/main.js" in expected
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name: archive.read(name) for name in archive.namelist() if name.startswith("zonemesh/shared/gui/")}
    assert shipped == expected

    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    # From an empty directory, with the installed copy first on the path: not the checkout.
    run = subprocess.run(
        [sys.executable, "-c", SERVE_EVERY_ASSET],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["module"].startswith(str(site))
    assert result["served"].pop("") == [200, len(expected["zonemesh/shared/gui/index.html"])]
    assert result["served"] == {
        name.removeprefix("zonemesh/shared/gui/"): [200, len(body)] for name, body in expected.items()
    }
