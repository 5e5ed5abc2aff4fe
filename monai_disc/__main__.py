"""``python -m monai_disc``: the ``monai-disc`` command line."""

from __future__ import annotations

from monai_disc.apps.cli import main

if __name__ == "__main__":
    main()
