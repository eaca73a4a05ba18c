#!/usr/bin/env python
"""ComfyHub's command line: `python manage.py help` lists the commands."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "comfyhub.settings")
    from comfyhub.config import ConfigError

    try:
        import comfyhub.settings  # noqa: F401  (validates the environment up front)
    except ConfigError as exc:
        print(f"comfyhub: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)

    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
