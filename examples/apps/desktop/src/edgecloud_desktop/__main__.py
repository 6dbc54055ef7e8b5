"""``python -m edgecloud_desktop``: open the app (Briefcase runs this module too)."""

from __future__ import annotations

from edgecloud_desktop.app import main

if __name__ == "__main__":
    main().main_loop()
