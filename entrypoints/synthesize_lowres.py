"""MLproject `synthesize_lowres`: `bpho synthesize` (-P set="k=v k=v", empty string = default)."""

import sys

from bpho.cli import main

if __name__ == "__main__":
    args, argv = sys.argv[1:], ["synthesize"]
    for key, value in zip(args[0::2], args[1::2]):
        if key == "--set":
            for item in value.split():
                argv += ["--set", item]
        elif key == "--force":
            argv += ["--force"] if value.lower() == "true" else []
        elif value != "":
            argv += [key, value]
    sys.exit(main(argv))
