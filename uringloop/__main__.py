"""`python -m uringloop`: this kernel's io_uring report; exit status 1 where it cannot be used."""

import sys

from uringloop import probe


def main() -> int:
    report = probe()
    print(report.format())
    return 0 if report.available else 1


if __name__ == "__main__":
    sys.exit(main())
