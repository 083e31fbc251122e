"""MLproject `export`: `bpho export` (-P model=URI -P out=PATH.zip; -P sample=LR_IMAGE, -P force=true optional)."""

import sys

from bpho.cli import main

if __name__ == "__main__":
    args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
    force = args.pop("--force", "false").lower() == "true"
    argv = ["export"] + [a for k, v in args.items() if v != "" for a in (k, v)] + (["--force"] if force else [])
    sys.exit(main(argv))
