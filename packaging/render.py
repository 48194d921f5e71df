"""Renders the reference unit files under packaging/ from the templates that ship inside the package
(gatewayd/supervisor/templates), with example values. ``gatewayd install`` renders the same templates with
the real paths of an installation; these copies are for reading, review and distribution packagers.

    .venv/bin/python packaging/render.py          rewrite the copies
    .venv/bin/python packaging/render.py --check  exit 1 if a copy differs from what the templates give
"""

from __future__ import annotations

import sys
from pathlib import Path

from gatewayd.supervisor.service import (
    ReloadStyle,
    ServiceSpec,
    daemon_command,
    render_launchd_plist,
    render_systemd_service,
    render_systemd_socket,
)

PACKAGING = Path(__file__).resolve().parent
EXECUTABLE = ("/usr/local/bin/gatewayd",)


def reference_files() -> dict[str, str]:
    """Relative path under packaging/ -> content."""
    system = ServiceSpec(
        command=daemon_command(EXECUTABLE, config_path=Path("/etc/gatewayd/config.yaml")),
        state_dir=Path("/var/lib/gatewayd"),
        port=8484,
        user="gatewayd",
    )
    per_user = ServiceSpec(
        command=daemon_command(EXECUTABLE), state_dir=Path("/home/alice/.local/state/gatewayd"), port=8484
    )
    launchd = ServiceSpec(
        command=daemon_command(EXECUTABLE),
        state_dir=Path("/Users/alice/Library/Application Support/gatewayd/state"),
        port=8484,
        stdout_path=Path("/Users/alice/Library/Logs/gatewayd/gatewayd.log"),
        stderr_path=Path("/Users/alice/Library/Logs/gatewayd/gatewayd.err.log"),
    )
    return {
        "systemd/gatewayd.service": render_systemd_service(
            system, per_user=False, reload_style=ReloadStyle.NOTIFY_RELOAD
        ),
        "systemd/gatewayd.socket": render_systemd_socket(system),
        "systemd/before-253/gatewayd.service": render_systemd_service(
            system, per_user=False, reload_style=ReloadStyle.KILL
        ),
        "systemd/user/gatewayd.service": render_systemd_service(
            per_user, per_user=True, reload_style=ReloadStyle.NOTIFY_RELOAD
        ),
        "systemd/user/gatewayd.socket": render_systemd_socket(per_user),
        "launchd/io.gatewayd.gatewayd.plist": render_launchd_plist(launchd),
    }


def main(argv: list[str]) -> int:
    check = argv == ["--check"]
    stale = []
    for relative, content in reference_files().items():
        path = PACKAGING / relative
        if path.exists() and path.read_text() == content:
            continue
        stale.append(relative)
        if not check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
    if check and stale:
        print(f"stale: {', '.join(stale)}; run: python packaging/render.py", file=sys.stderr)
        return 1
    for relative in stale:
        print(f"wrote packaging/{relative}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
