"""A scanner for secrets in what a run leaves behind (logs, spans, /metrics pages, error bodies).

``Secrets`` holds the secret strings of one run, each under a name; adding a secret is one line
(``secrets.add("api key", key)``). A secret is looked for whole, and a PEM private key by every
line of its body, so a partial leak (one line of a key in a traceback) is found too.
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

MIN_FRAGMENT = 12
"""Shortest fragment looked for: shorter ones would match by chance."""


@dataclasses.dataclass
class Secrets:
    fragments: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    """By secret name, the strings that must appear nowhere."""

    def add(self, name: str, value: str) -> None:
        """A secret, looked for as given and URL-quoted."""
        if len(value) < MIN_FRAGMENT:
            raise ValueError(f"secret {name!r} is too short to scan for reliably")
        forms = dict.fromkeys([value, urllib.parse.quote(value, safe="")])
        self.fragments.setdefault(name, []).extend(forms)

    def add_pem_key(self, name: str, path: Path) -> None:
        """A PEM private key: every line of its base64 body."""
        body = [line.strip() for line in path.read_text().splitlines()
                if line.strip() and not line.startswith("-----")]
        self.fragments.setdefault(name, []).extend(
            line for line in body if len(line) >= MIN_FRAGMENT)

    def scan(self, sources: Mapping[str, str | bytes]) -> list[str]:
        """Every (secret, source) where a fragment of the secret shows, as "name in source"."""
        found = []
        for source, content in sources.items():
            text = content.decode("utf-8", "replace") if isinstance(content, bytes) else content
            for name, fragments in self.fragments.items():
                if any(fragment in text for fragment in fragments):
                    found.append(f"{name} in {source}")
        return found
