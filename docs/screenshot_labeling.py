"""Make docs/labeling-view.png: the labeling view as an annotator sees it, on the sample.

Needs Label Studio (`make label-studio`), Debian's chromium (`apt-get install chromium`) and the
playwright package (`.venv/bin/pip install playwright`; it drives the system chromium, nothing is
downloaded). Starts its own server on loopback in a temp folder and stops it.

    .venv/bin/python docs/screenshot_labeling.py
"""

from __future__ import annotations

import secrets
import socket
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from annotation import labelstudio as lsapi  # noqa: E402
from annotation import sync  # noqa: E402
from annotation.local_server import start  # noqa: E402
from pipelines.build import build  # noqa: E402
from storage.layout import Layout  # noqa: E402

OUT = REPO / "docs" / "labeling-view.png"


def main() -> None:
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="ffe-shot-"))
    layout = Layout.at(tmp / "work")
    build(layout, echo=lambda _: None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token, password, user = secrets.token_hex(20), secrets.token_hex(12), "admin@ffe.local"
    server = start(REPO / ".venv-ls" / "bin" / "label-studio", tmp / "ls", port, token=token, username=user,
                   password=password, document_root=tmp)  # fmt: skip
    try:
        settings = sync.settings_from_env(layout, url=server.url, token=token, document_root=str(tmp))
        sync.push(layout, settings)
        ls = lsapi.connect(settings)
        project = lsapi.ensure_project(ls, settings)
        task = lsapi._all_tasks(ls, project, settings)[0]
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path="/usr/bin/chromium",
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                      "--disable-sync", "--no-first-run"],
            )  # fmt: skip
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{server.url}/user/login/")
            page.fill("input[name=email]", user)
            page.fill("input[name=password]", password)
            page.click("button[type=submit]")
            page.wait_for_load_state("networkidle")
            page.goto(f"{server.url}/projects/{project}/data?task={task.id}")
            page.wait_for_selector("text=happy", timeout=60_000)
            page.wait_for_timeout(2000)
            page.screenshot(path=str(OUT))
            browser.close()
    finally:
        server.stop()
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
