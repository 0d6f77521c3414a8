"""The wasm target's second runner: a saved artifact in headless Chromium, through a real page.

The artifact directory is served over HTTP on loopback; `honer_page.html` (shipped in every
wasm artifact) loads model.wasm and the weights through the ES-module loader, runs the inputs
the server hands it as one `inputs.bin`, and writes the outputs, base64-encoded, into the
page, which Chromium dumps when the page settles."""

from __future__ import annotations

import base64
import functools
import http.server
import json
import re
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np

from ..errors import ArtifactError, ToolchainError

PAGE = "honer_page.html"
INPUTS = "inputs.bin"


def run_in_chromium(artifact: Path, inputs: list[np.ndarray],
                    timeout_s: float = 300) -> list[np.ndarray]:
    browser = shutil.which("chromium")
    if browser is None:
        raise ToolchainError("running a wasm artifact in a browser needs chromium: "
                             "apt-get install chromium")
    artifact = Path(artifact)
    manifest = json.loads((artifact / "manifest.json").read_text())
    if not (artifact / PAGE).exists():
        raise ArtifactError(f"{artifact}: no {PAGE}; only wasm artifacts run in a browser")
    packed = b"".join(np.ascontiguousarray(x).tobytes() for x in inputs)
    handler = functools.partial(_Handler, packed, directory=str(artifact))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/{PAGE}?inputs={INPUTS}"
        try:
            dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                                  f"--virtual-time-budget={int(timeout_s * 1000)}",
                                  "--dump-dom", url],
                                 capture_output=True, text=True, timeout=timeout_s).stdout
        finally:
            server.shutdown()
    status = re.search(r'<pre id="status">([^<]*)</pre>', dom)
    if status is None or status.group(1) != "done":
        raise ArtifactError(f"{artifact} in Chromium: "
                            f"{status.group(1) if status else 'the page did not load'}")
    encoded = re.search(r'<pre id="outputs">([^<]*)</pre>', dom).group(1).split("\n")
    return [np.frombuffer(base64.b64decode(text), spec["dtype"]).reshape(spec["shape"])
            for text, spec in zip(encoded, manifest["outputs"])]


class _Handler(http.server.SimpleHTTPRequestHandler):
    """The artifact's files, plus the inputs from memory (the artifact stays as saved)."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".mjs": "text/javascript", ".wasm": "application/wasm"}

    def __init__(self, packed: bytes, *args, **kwargs):
        self.packed = packed
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:  # noqa: N802 - the http.server hook's name
        if self.path.split("?")[0] != "/" + INPUTS:
            return super().do_GET()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(self.packed)))
        self.end_headers()
        self.wfile.write(self.packed)
        return None

    def log_message(self, *args) -> None:  # quiet
        pass
